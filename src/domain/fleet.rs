//! The fleet at a glance: which of a group's states is its *worst*, the colour of its tile on
//! the overview.
//!
//! Contract: states rank, worst first, `offline` > `silent` > `late` > `never_seen` > `quiet` >
//! `healthy`; `retired` devices are ignored (they are out of every decision). A group's worst
//! state is the highest-ranked state with at least one device; a group with no devices, or
//! only retired ones, has none. Why this order: `offline` and `silent` are open alerts
//! (offline first: nobody can reach the unit, silent still answers), `late` is the warning
//! before an alert, `never_seen` is a unit we know of but cannot vouch for, `quiet` is a unit we
//! are deliberately not judging right now, and `healthy` is the only good news.

use super::device::DeviceState;

/// Rank of a state, higher is worse; `None` for `retired`, which never colours a group.
pub fn severity(state: DeviceState) -> Option<u8> {
    match state {
        DeviceState::Healthy => Some(0),
        DeviceState::Quiet => Some(1),
        DeviceState::NeverSeen => Some(2),
        DeviceState::Late => Some(3),
        DeviceState::Silent => Some(4),
        DeviceState::Offline => Some(5),
        DeviceState::Retired => None,
    }
}

/// The worst state among `counts` (state, number of devices) that has devices; `None` when
/// no state but `retired` has any.
pub fn worst_state(counts: impl IntoIterator<Item = (DeviceState, i64)>) -> Option<DeviceState> {
    counts
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .filter_map(|(s, _)| severity(s).map(|r| (r, s)))
        .max_by_key(|&(r, _)| r)
        .map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use DeviceState::*;

    #[test]
    fn the_order_is_the_documented_one() {
        let worst_first = [Offline, Silent, Late, NeverSeen, Quiet, Healthy];
        for pair in worst_first.windows(2) {
            assert_eq!(
                worst_state([(pair[0], 1), (pair[1], 1000)]),
                Some(pair[0]),
                "{:?} must be worse than {:?}",
                pair[0],
                pair[1]
            );
        }
        // every state is ranked except retired
        assert_eq!(
            DeviceState::ALL
                .iter()
                .filter(|s| severity(**s).is_none())
                .count(),
            1
        );
    }

    #[test]
    fn retired_and_empty_groups_have_no_worst_state() {
        assert_eq!(worst_state([]), None);
        assert_eq!(worst_state([(Retired, 40)]), None);
        assert_eq!(worst_state([(Offline, 0), (Healthy, 0)]), None);
        assert_eq!(worst_state([(Retired, 40), (Healthy, 1)]), Some(Healthy));
        // a negative count (drift the self-check has not corrected yet) colours nothing
        assert_eq!(worst_state([(Offline, -1), (Late, 2)]), Some(Late));
    }

    proptest! {
        #[test]
        fn worst_is_one_of_the_present_states_and_outranks_them(
            counts in proptest::collection::vec((0usize..7, 0i64..3), 0..12)
        ) {
            let counts: Vec<_> = counts.into_iter().map(|(i, n)| (DeviceState::ALL[i], n)).collect();
            let present: Vec<_> = counts.iter().filter(|(s, n)| *n > 0 && *s != Retired).map(|(s, _)| *s).collect();
            match worst_state(counts.clone()) {
                None => prop_assert!(present.is_empty()),
                Some(w) => {
                    prop_assert!(present.contains(&w));
                    for s in present {
                        prop_assert!(severity(s) <= severity(w));
                    }
                }
            }
        }
    }
}
