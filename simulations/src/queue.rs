//! The event queue: events ordered by `(time, sequence number)`, so that two
//! events at the same virtual time always come out in the order they were
//! scheduled — the run is a function of its seed.
//!
//! Most events go through a binary heap. Events scheduled a *constant* delay
//! ahead (hedge timers) are already in time order when scheduled, so they
//! wait in FIFO lanes instead: cheaper, and the heap stays small. Popping
//! takes the smallest key among the heap's top and the lanes' fronts.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// Virtual time, µs.
pub type Time = u64;

/// `(time, sequence)` packed so that one integer comparison orders events.
type Key = u128;

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
}

impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HeapEntry {
    /// Reversed: `BinaryHeap` is a max-heap, the earliest event comes first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.cmp(&self.key)
    }
}

/// A deterministic event queue.
#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<HeapEntry>,
    lanes: Vec<VecDeque<(Key, u32)>>,
    /// Events by slot; the heap and the lanes hold slots (small entries that
    /// are cheap to sift), a free list reuses them.
    events: Vec<Option<E>>,
    free: Vec<u32>,
    sequence: u64,
}

impl<E> EventQueue<E> {
    /// An empty queue with `lanes` FIFO lanes.
    pub fn new(lanes: usize) -> EventQueue<E> {
        EventQueue {
            heap: BinaryHeap::new(),
            lanes: (0..lanes).map(|_| VecDeque::new()).collect(),
            events: Vec::new(),
            free: Vec::new(),
            sequence: 0,
        }
    }

    fn store(&mut self, event: E) -> (Key, u32) {
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
        (key(0, self.sequence), slot)
    }

    /// Schedules `event` at `at`.
    pub fn push(&mut self, at: Time, event: E) {
        let (sequence, slot) = self.store(event);
        self.heap.push(HeapEntry {
            key: key(at, 0) | sequence,
            slot,
        });
    }

    /// Schedules `event` at `at` in FIFO lane `lane`.
    ///
    /// # Panics
    ///
    /// If `at` is earlier than the lane's last event: a lane only takes
    /// events in time order.
    pub fn push_lane(&mut self, lane: usize, at: Time, event: E) {
        let (sequence, slot) = self.store(event);
        let key = key(at, 0) | sequence;
        let queue = &mut self.lanes[lane];
        assert!(
            queue.back().is_none_or(|&(last, _)| last < key),
            "a lane takes events in time order"
        );
        queue.push_back((key, slot));
    }

    /// The earliest event and its time.
    pub fn pop(&mut self) -> Option<(Time, E)> {
        let mut best: Option<(Key, Option<usize>)> = self.heap.peek().map(|top| (top.key, None));
        for (lane, queue) in self.lanes.iter().enumerate() {
            if let Some(&(key, _)) = queue.front() {
                if best.is_none_or(|(best_key, _)| key < best_key) {
                    best = Some((key, Some(lane)));
                }
            }
        }
        let (key, source) = best?;
        unsafe {
            POPS += 1;
            LEN_SUM += self.heap.len() as u64;
        }
        let slot = match source {
            None => self.heap.pop().expect("peeked").slot,
            Some(lane) => self.lanes[lane].pop_front().expect("peeked").1,
        };
        self.free.push(slot);
        let event = self.events[slot as usize].take().expect("a queued event");
        Some((time_of(key), event))
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
        let mut queue = EventQueue::new(1);
        queue.push(30, "c");
        queue.push_lane(0, 10, "a");
        queue.push(10, "b"); // same time as "a", scheduled later
        queue.push_lane(0, 40, "d");
        queue.push(5, "first");
        let order: Vec<(Time, &str)> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            vec![(5, "first"), (10, "a"), (10, "b"), (30, "c"), (40, "d")]
        );
        assert!(queue.is_empty());
    }

    #[test]
    #[should_panic(expected = "time order")]
    fn a_lane_refuses_an_earlier_event() {
        let mut queue = EventQueue::new(1);
        queue.push_lane(0, 10, ());
        queue.push_lane(0, 9, ());
    }
}
pub static mut POPS: u64 = 0;
pub static mut LEN_SUM: u64 = 0;
