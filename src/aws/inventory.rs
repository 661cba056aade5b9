//! The IoT registry inventory (issue 9 item 6) and the connectivity reconciliation with the
//! fleet index (item 7): two leader-only pollers, `inventory` and `connectivity`.
//!
//! # Inventory (`inventory.sync`, default 10 min, and at start)
//! - [`list`] reads the whole registry: `ListThings`, `ListThingGroups`, `DescribeThingGroup`
//!   (attributes, parent) and `ListThingsInThingGroup`, every page through the SDK paginators.
//!   Any failed call fails the whole poll and **nothing is written**: a partial listing would
//!   look like deleted things.
//! - [`plan`] (pure) maps the listing to what we store, under the configuration:
//!   - device id = thing name. A name that is not a usable id (`identity::validate_id`:
//!     control characters, over 128 characters) is skipped, counted and warned about.
//!   - group: a configured `device_pattern` wins; else the thing attribute
//!     `inventory.group_attribute` when it is set and the thing has a usable value; else its
//!     thing groups: the innermost (deepest in the parent chain), ties to the smallest name
//!     (byte order), so a thing in several groups always lands in the same one. A thing with no
//!     group from the registry loses a registry group it had (one from its telemetry topic stays).
//!   - a thing group's attributes `fleetwatch:time_zone` and `fleetwatch:quiet_hours` give the
//!     group's time zone and quiet hours (parsed like the configuration's); a bad value is
//!     skipped with a warning and the rest applies (fleet time zone, no quiet hours). A group
//!     configured in the file is never written by the registry: configuration wins.
//!   - thing attributes `fleetwatch:expected_interval` and `fleetwatch:grace` override the
//!     device's expectations, unless `devices.overrides` configures that device (configuration
//!     wins); a bad value is skipped, the other applies.
//!   - `inventory.client_id_attribute`: its value is the thing's MQTT client ID (`client_ids`
//!     source `inventory`, and ingest's in-memory identity at once). A client ID the
//!     configuration maps, one of our own, or one claimed by two things (the first thing by
//!     name keeps it) is skipped with a warning.
//! - [`crate::db::inventory`] applies the plan in one transaction, writing only what differs:
//!   a second identical sync writes nothing.
//! - Deletion: a device the registry listed before (`inventory_things`) that a complete listing
//!   no longer names is retired through [`crate::retirement::retire`] with actor [`ACTOR`]
//!   (its history kept, its alerts resolved, no alert for it). When the thing comes back the
//!   device is unretired, but only if the inventory retired it: a device retired by hand stays
//!   retired until someone unretires it. Devices the registry never listed are never retired.
//! - The device cap (`devices.max_devices`) limits what *ingest* creates. Registry devices are
//!   created whatever the cap (the registry is authoritative) and occupy room under it; a
//!   registry larger than the cap is kept whole, and the log and `/healthz` say so.
//! - Ingest learns the registry's devices (its in-memory registry) and client-ID mappings (its
//!   identity) after each sync, without a restart.
//!
//! # Connectivity (`inventory.reconcile`, default 10 min, and at start)
//! [`reconcile`] pages through `SearchIndex` (index `AWS_Things`, queries
//! `connectivity.connected:true` and `:false`, following `nextToken`). [`decide_correction`]
//! (pure) corrects a device whose stored connectivity is older than the index's
//! `connectivity.timestamp` (and says otherwise); the correction is written with a conditional
//! update on what was read and recorded in the device's history (`connectivity_corrected`).
//! It is not a presence event: it is stored as "connectivity as of the index's timestamp"
//! (`conn_version` null, see the migration), so any presence event later than that timestamp
//! replaces it and no older one undoes it. Where fleet indexing (with connectivity) is not
//! enabled, the poll says so once in the log and as a note on `/healthz`, and succeeds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_config::SdkConfig;
use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::domain::identity::{validate_id, Identity};
pub use crate::domain::inventory::*;
use crate::logging::RateLimitedWarn;

use super::{PollerContext, PollerHealth};

/// Page sizes of the listing calls (tests make them small to exercise paging).
#[derive(Debug, Clone, Copy)]
pub struct PageSizes {
    pub things: i32,
    pub groups: i32,
    pub search: i32,
}

impl Default for PageSizes {
    fn default() -> Self {
        // The APIs' maxima (ListThings 250, ListThingGroups/ListThingsInThingGroup 250,
        // SearchIndex 500): fewer calls against the registry's rate limits.
        Self {
            things: 250,
            groups: 250,
            search: 500,
        }
    }
}

/// List the whole registry. Any failure fails the listing: it is complete or it is an error.
pub async fn list(client: &aws_sdk_iot::Client, pages: PageSizes) -> anyhow::Result<Listing> {
    let mut things = Vec::new();
    let mut stream = client
        .list_things()
        .max_results(pages.things)
        .into_paginator()
        .items()
        .send();
    while let Some(t) = stream.next().await {
        let t = t.context("ListThings")?;
        let Some(name) = t.thing_name() else { continue };
        things.push(Thing {
            name: name.to_string(),
            attributes: t
                .attributes()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        });
    }
    let mut names = Vec::new();
    let mut stream = client
        .list_thing_groups()
        .max_results(pages.groups)
        .into_paginator()
        .items()
        .send();
    while let Some(g) = stream.next().await {
        let g = g.context("ListThingGroups")?;
        if let Some(n) = g.group_name() {
            names.push(n.to_string());
        }
    }
    names.sort();
    names.dedup();
    let mut groups = Vec::new();
    let mut members = BTreeMap::new();
    for name in names {
        let d = client
            .describe_thing_group()
            .thing_group_name(&name)
            .send()
            .await
            .with_context(|| format!("DescribeThingGroup {}", short(&name)))?;
        groups.push(ThingGroup {
            name: name.clone(),
            parent: d
                .thing_group_metadata()
                .and_then(|m| m.parent_group_name())
                .map(str::to_string),
            attributes: d
                .thing_group_properties()
                .and_then(|p| p.attribute_payload())
                .and_then(|p| p.attributes())
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        });
        let mut in_group = Vec::new();
        let mut stream = client
            .list_things_in_thing_group()
            .thing_group_name(&name)
            .max_results(pages.groups)
            .into_paginator()
            .items()
            .send();
        while let Some(t) = stream.next().await {
            in_group.push(t.with_context(|| format!("ListThingsInThingGroup {}", short(&name)))?);
        }
        members.insert(name, in_group);
    }
    Ok(Listing {
        things,
        groups,
        members,
    })
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    pub things: usize,
    /// Rows written (groups, devices, client IDs, registry bookkeeping); 0 when nothing changed.
    pub writes: u64,
    pub retired: Vec<String>,
    pub unretired: Vec<String>,
    /// Skipped input, per reason.
    pub skipped: BTreeMap<&'static str, usize>,
}

/// The inventory poller.
pub struct Inventory {
    pub client: aws_sdk_iot::Client,
    pub pages: PageSizes,
    cfg: Arc<Config>,
    identity: Arc<Identity>,
    ctx: PollerContext,
    poller: Arc<PollerHealth>,
    warn: RateLimitedWarn,
}

impl Inventory {
    pub fn new(client: aws_sdk_iot::Client, cfg: &Config, ctx: &PollerContext) -> Self {
        let identity = match &ctx.ingest {
            Some(i) => i.identity.clone(),
            None => Arc::new(Identity::from_config(cfg)),
        };
        Self {
            client,
            pages: PageSizes::default(),
            cfg: Arc::new(cfg.clone()),
            identity,
            ctx: ctx.clone(),
            poller: ctx.health.poller("inventory"),
            warn: RateLimitedWarn::new(Duration::from_secs(60)),
        }
    }

    /// One sync: list, plan, write, retire and unretire, and tell ingest.
    pub async fn sync(&self) -> anyhow::Result<SyncOutcome> {
        let listing = list(&self.client, self.pages).await?;
        let now = self.ctx.clock.now();
        let rules = Rules::from_config(&self.cfg, &self.identity);
        let plan = plan(&listing, &rules);
        let mut out = SyncOutcome {
            things: plan.devices.len(),
            ..Default::default()
        };
        for (reason, detail) in &plan.skipped {
            *out.skipped.entry(reason).or_default() += 1;
            self.warn
                .warn(reason, &format_args!("IoT registry: skipped {detail}"));
        }
        let pool = &self.ctx.pool;
        let stored = crate::db::inventory::listed(pool).await?;
        out.writes = crate::db::inventory::apply(pool, &plan, now).await?;
        let listed: BTreeSet<String> = plan.devices.iter().map(|d| d.id.clone()).collect();
        let m = membership(&stored, &listed);
        for id in &m.gone {
            // Retire first, then mark gone: a crash in between retires again (a no-op).
            if let crate::retirement::Change::Changed { .. } =
                crate::retirement::retire(pool, id, ACTOR, now).await?
            {
                out.retired.push(id.clone());
            }
            crate::db::inventory::mark_gone(pool, id, Some(now)).await?;
            out.writes += 1;
        }
        for id in &m.back {
            let by = crate::db::inventory::retired_by(pool, id).await?;
            if by.as_deref() == Some(ACTOR) {
                if let crate::retirement::Change::Changed { .. } =
                    crate::retirement::unretire(pool, id, ACTOR, now).await?
                {
                    out.unretired.push(id.clone());
                }
            }
            crate::db::inventory::mark_gone(pool, id, None).await?;
            out.writes += 1;
        }
        for id in &out.retired {
            tracing::info!(device = %short(id), "IoT registry: thing deleted, device retired");
        }
        for id in &out.unretired {
            tracing::info!(device = %short(id), "IoT registry: thing re-created, device unretired");
        }

        let mut notes = Vec::new();
        if let Some(ingest) = &self.ctx.ingest {
            self.identity.set_registry_clients(
                plan.clients
                    .iter()
                    .map(|(c, d)| (c.clone(), d.clone()))
                    .collect(),
            );
            ingest.registry.learn(listed.iter().map(String::as_str));
        }
        let cap = usize::try_from(self.cfg.devices.max_devices).unwrap_or(0);
        if listed.len() > cap {
            let note = format!(
                "the IoT registry lists {} things, more than devices.max_devices = {cap}: all are \
                 kept, and ingest creates no device outside the registry",
                listed.len()
            );
            self.warn.warn("registry_over_cap", &note);
            notes.push(note);
        }
        if !out.skipped.is_empty() {
            let parts: Vec<String> = out
                .skipped
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            notes.push(format!(
                "skipped registry input in the last sync ({}); see the log",
                parts.join(", ")
            ));
        }
        self.poller.set_notes(notes);
        Ok(out)
    }
}

/// Map one `SearchIndex` document (pure). `Err` says why it is skipped.
pub fn map_document(
    doc: &aws_sdk_iot::types::ThingDocument,
    now: DateTime<Utc>,
) -> Result<IndexEntry, String> {
    let name = doc.thing_name().ok_or("no thing name")?;
    validate_id(name).map_err(|e| format!("thing {}: {e}", short(name)))?;
    let c = doc
        .connectivity()
        .ok_or_else(|| format!("thing {}: no connectivity", short(name)))?;
    let connected = c
        .connected()
        .ok_or_else(|| format!("thing {}: no connectivity.connected", short(name)))?;
    let ms = c
        .timestamp()
        .ok_or_else(|| format!("thing {}: no connectivity.timestamp", short(name)))?;
    let at = DateTime::from_timestamp_millis(ms)
        .filter(|t| t.timestamp() > 0)
        .ok_or_else(|| {
            format!(
                "thing {}: connectivity.timestamp {ms} out of range",
                short(name)
            )
        })?;
    Ok(IndexEntry {
        device: name.to_string(),
        connected,
        at: at.min(now),
        disconnect_reason: c.disconnect_reason().map(short),
    })
}

/// What one reconciliation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileOutcome {
    /// False when fleet indexing (with connectivity) is not enabled.
    pub indexed: bool,
    pub documents: usize,
    pub corrected: Vec<String>,
    pub skipped: usize,
}

/// Whether a `SearchIndex` failure means "no fleet index here" rather than a failed poll.
fn index_missing(
    e: &aws_sdk_iot::error::SdkError<aws_sdk_iot::operation::search_index::SearchIndexError>,
) -> bool {
    use aws_sdk_iot::operation::search_index::SearchIndexError as E;
    matches!(
        e.as_service_error(),
        Some(
            E::ResourceNotFoundException(_)
                | E::IndexNotReadyException(_)
                | E::InvalidQueryException(_)
        )
    )
}

/// Every document of one query, following `nextToken` (there is no SDK paginator).
pub async fn search_all(
    client: &aws_sdk_iot::Client,
    query: &str,
    page: i32,
) -> Result<
    Vec<aws_sdk_iot::types::ThingDocument>,
    aws_sdk_iot::error::SdkError<aws_sdk_iot::operation::search_index::SearchIndexError>,
> {
    let mut docs = Vec::new();
    let mut token: Option<String> = None;
    let mut seen_tokens = BTreeSet::new();
    loop {
        let out = client
            .search_index()
            .index_name("AWS_Things")
            .query_string(query)
            .max_results(page)
            .set_next_token(token.clone())
            .send()
            .await?;
        docs.extend(out.things().iter().cloned());
        match out.next_token().filter(|t| !t.is_empty()) {
            // A token seen before would loop forever.
            Some(t) if seen_tokens.insert(t.to_string()) => token = Some(t.to_string()),
            _ => return Ok(docs),
        }
    }
}

/// The connectivity poller.
pub struct Connectivity {
    pub client: aws_sdk_iot::Client,
    pub pages: PageSizes,
    ctx: PollerContext,
    poller: Arc<PollerHealth>,
    said_off: AtomicBool,
    warn: RateLimitedWarn,
}

impl Connectivity {
    pub fn new(client: aws_sdk_iot::Client, ctx: &PollerContext) -> Self {
        Self {
            client,
            pages: PageSizes::default(),
            ctx: ctx.clone(),
            poller: ctx.health.poller("connectivity"),
            said_off: AtomicBool::new(false),
            warn: RateLimitedWarn::new(Duration::from_secs(60)),
        }
    }

    /// One reconciliation.
    pub async fn reconcile(&self) -> anyhow::Result<ReconcileOutcome> {
        let mut docs = Vec::new();
        for q in [
            "connectivity.connected:true",
            "connectivity.connected:false",
        ] {
            match search_all(&self.client, q, self.pages.search).await {
                Ok(d) => docs.extend(d),
                Err(e) if index_missing(&e) => {
                    let why = format!(
                        "fleet indexing with connectivity is not enabled ({}): stored \
                         connectivity is not reconciled",
                        short(&format!("{}", aws_sdk_iot::error::DisplayErrorContext(&e)))
                    );
                    if !self.said_off.swap(true, AtomicOrdering::Relaxed) {
                        tracing::info!("{why}");
                    }
                    self.poller.set_notes(vec![why]);
                    return Ok(ReconcileOutcome::default());
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("SearchIndex {q}")));
                }
            }
        }
        self.said_off.store(false, AtomicOrdering::Relaxed);
        let now = self.ctx.clock.now();
        let mut out = ReconcileOutcome {
            indexed: true,
            documents: docs.len(),
            ..Default::default()
        };
        // One entry per device: the newest the index says (a thing may move between the two
        // queries while we page).
        let mut entries: BTreeMap<String, IndexEntry> = BTreeMap::new();
        for d in &docs {
            match map_document(d, now) {
                Ok(e) => {
                    if entries.get(&e.device).is_none_or(|old| e.at > old.at) {
                        entries.insert(e.device.clone(), e);
                    }
                }
                Err(why) => {
                    out.skipped += 1;
                    self.warn.warn(
                        "bad_index_document",
                        &format_args!("fleet index: skipped a document: {why}"),
                    );
                }
            }
        }
        let ids: Vec<String> = entries.keys().cloned().collect();
        let stored = crate::db::inventory::connectivity_of(&self.ctx.pool, &ids).await?;
        for s in stored {
            let Some(e) = entries.get(&s.id) else {
                continue;
            };
            if decide_correction(&s, e)
                && crate::db::inventory::correct_connectivity(&self.ctx.pool, &s, e, now).await?
            {
                out.corrected.push(s.id.clone());
            }
        }
        let notes = if out.skipped > 0 {
            vec![format!(
                "{} fleet index documents skipped in the last reconciliation; see the log",
                out.skipped
            )]
        } else {
            vec![]
        };
        self.poller.set_notes(notes);
        Ok(out)
    }
}

/// Bring ingest's in-memory identity and device registry in line with what the registry
/// sync stored (`client_ids` of source `inventory`, devices the registry lists). The sync does
/// this on the leader as it writes; every replica (standbys included, whose ingest runs too)
/// does it at start and every `inventory.sync`, so a restart or a follower knows the registry's
/// client IDs without waiting for the leader's next sync.
pub async fn refresh_ingest(
    pool: &sqlx::PgPool,
    ingest: &crate::ingest::IngestContext,
) -> anyhow::Result<()> {
    let (clients, devices) = crate::db::inventory::ingest_view(pool).await?;
    ingest
        .identity
        .set_registry_clients(clients.into_iter().collect());
    ingest.registry.learn(devices.iter().map(String::as_str));
    Ok(())
}

/// Register the `inventory` and `connectivity` pollers (each leader-only, each switched off
/// alone). They are two pollers, not one: their periods differ, and a fleet without indexing
/// must not make the registry sync look unhealthy (nor the reverse).
pub fn start(
    sdk: &SdkConfig,
    cfg: &Config,
    tasks: &crate::app::tasks::Supervisor,
    ctx: &PollerContext,
) {
    let client = aws_sdk_iot::Client::new(sdk);
    if let (true, Some(ingest)) = (cfg.inventory.enabled, ctx.ingest.clone()) {
        let pool = ctx.pool.clone();
        tasks.periodic(
            crate::app::tasks::Periodic::new("inventory_cache", cfg.inventory.sync.0),
            move |_| {
                let (pool, ingest) = (pool.clone(), ingest.clone());
                async move { refresh_ingest(&pool, &ingest).await }
            },
        );
    }
    if cfg.inventory.enabled {
        let inv = Arc::new(Inventory::new(client.clone(), cfg, ctx));
        super::spawn_poller(tasks, ctx, "inventory", cfg.inventory.sync.0, move |_| {
            let inv = inv.clone();
            async move { inv.sync().await.map(|_| ()) }
        });
    }
    // `inventory.enabled = false` switches the whole registry side off, reconciliation too.
    if cfg.inventory.enabled && cfg.inventory.reconcile_enabled {
        let con = Arc::new(Connectivity::new(client, ctx));
        super::spawn_poller(
            tasks,
            ctx,
            "connectivity",
            cfg.inventory.reconcile.0,
            move |_| {
                let con = con.clone();
                async move { con.reconcile().await.map(|_| ()) }
            },
        );
    }
}
