//! The event queue: events ordered by `(time, sequence number)`, so that two
//! events at the same virtual time always come out in the order they were
//! scheduled — the run is a function of its seed.
//!
//! Events go through a binary heap, except those that are already in time
//! order when scheduled: the messages of one FIFO link, the hedge timers
//! (always the same delay ahead). Those wait in FIFO *lanes*, and the heap
//! holds one entry per non-empty lane, for its front event: the heap stays
//! small however many messages queue behind a slow replica.

use std::cmp::Ordering;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, VecDeque};

/// Virtual time, µs.
pub type Time = u64;

/// `(time, sequence)` packed so that one integer comparison orders events.
type Key = u128;

/// `HeapEntry::lane` of an event that is not in a lane.
const NO_LANE: u32 = u32::MAX;

fn key(at: Time, sequence: u64) -> Key {
    (u128::from(at) << 64) | u128::from(sequence)
}

fn time_of(key: Key) -> Time {
    (key >> 64) as Time
}

#[derive(Debug, PartialEq, Eq)]
struct HeapEntry {
    key: Key,
    slot: u32,
    lane: u32,
}

impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HeapEntry {
    /// Reversed: `BinaryHeap` is a max-heap, the earliest event comes first.
    /// Keys are unique (the sequence number), so this is a total order.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.cmp(&self.key)
    }
}

/// A deterministic event queue.
#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<HeapEntry>,
    /// Each lane's events after its front (the front is in the heap).
    lanes: Vec<VecDeque<(Key, u32)>>,
    /// The key of each lane's last event (time order check).
    lane_last: Vec<Option<Key>>,
    /// True while the lane's front event is in the heap.
    lane_pending: Vec<bool>,
    /// Events by slot; the heap and the lanes hold slots (small entries that
    /// are cheap to sift), a free list reuses them.
    events: Vec<Option<E>>,
    free: Vec<u32>,
    sequence: u64,
}

impl<E> EventQueue<E> {
    /// An empty queue with `lanes` FIFO lanes.
    pub fn new(lanes: usize) -> EventQueue<E> {
        assert!(lanes < NO_LANE as usize, "lane ids fit in u32");
        EventQueue {
            heap: BinaryHeap::new(),
            lanes: (0..lanes).map(|_| VecDeque::new()).collect(),
            lane_last: vec![None; lanes],
            lane_pending: vec![false; lanes],
            events: Vec::new(),
            free: Vec::new(),
            sequence: 0,
        }
    }

    fn store(&mut self, at: Time, event: E) -> (Key, u32) {
        self.sequence += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.events[slot as usize] = Some(event);
                slot
            }
            None => {
                self.events.push(Some(event));
                u32::try_from(self.events.len() - 1).expect("fewer than 2^32 queued events")
            }
        };
        (key(at, self.sequence), slot)
    }

    /// Schedules `event` at `at`.
    pub fn push(&mut self, at: Time, event: E) {
        let (key, slot) = self.store(at, event);
        self.heap.push(HeapEntry {
            key,
            slot,
            lane: NO_LANE,
        });
    }

    /// Schedules `event` at `at` in FIFO lane `lane`.
    ///
    /// # Panics
    ///
    /// If `at` is earlier than the lane's last event: a lane only takes
    /// events in time order.
    pub fn push_lane(&mut self, lane: usize, at: Time, event: E) {
        let (key, slot) = self.store(at, event);
        assert!(
            self.lane_last[lane].is_none_or(|last| last < key),
            "a lane takes events in time order"
        );
        self.lane_last[lane] = Some(key);
        if self.lane_pending[lane] {
            self.lanes[lane].push_back((key, slot));
        } else {
            self.lane_pending[lane] = true;
            self.heap.push(HeapEntry {
                key,
                slot,
                lane: lane as u32,
            });
        }
    }

    /// The earliest event and its time.
    pub fn pop(&mut self) -> Option<(Time, E)> {
        let mut top = self.heap.peek_mut()?;
        let (at, slot, lane) = (time_of(top.key), top.slot, top.lane);
        let next = if lane == NO_LANE {
            None
        } else {
            self.lanes[lane as usize].pop_front()
        };
        match next {
            // The lane's next event takes the front's place in the heap: one
            // sift instead of a pop and a push. (Keys are unique, so the
            // heap's shape never changes the order events come out in.)
            Some((key, slot)) => *top = HeapEntry { key, slot, lane },
            None => {
                if lane != NO_LANE {
                    self.lane_pending[lane as usize] = false;
                }
                PeekMut::pop(top);
            }
        }
        self.free.push(slot);
        let event = self.events[slot as usize].take().expect("a queued event");
        Some((at, event))
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len() + self.lanes.iter().map(VecDeque::len).sum::<usize>()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_by_time_then_by_scheduling_order() {
        let mut queue = EventQueue::new(2);
        queue.push(30, "c");
        queue.push_lane(0, 10, "a");
        queue.push(10, "b"); // same time as "a", scheduled later
        queue.push_lane(0, 40, "d");
        queue.push_lane(1, 35, "lane 1");
        queue.push(5, "first");
        queue.push_lane(0, 50, "e");
        let order: Vec<(Time, &str)> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            vec![
                (5, "first"),
                (10, "a"),
                (10, "b"),
                (30, "c"),
                (35, "lane 1"),
                (40, "d"),
                (50, "e")
            ]
        );
        assert!(queue.is_empty());
        queue.push_lane(0, 60, "again");
        assert_eq!(queue.pop(), Some((60, "again")));
    }

    #[test]
    #[should_panic(expected = "time order")]
    fn a_lane_refuses_an_earlier_event() {
        let mut queue = EventQueue::new(1);
        queue.push_lane(0, 10, ());
        queue.push_lane(0, 9, ());
    }
}
