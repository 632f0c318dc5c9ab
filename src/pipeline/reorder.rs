//! Releases results strictly in frame order, holding at most a fixed window of them.

use std::collections::VecDeque;

/// What happened to a pushed item.
#[derive(Debug, PartialEq, Eq)]
pub enum Push<T> {
    /// The item completed a run starting at the next expected index: these are ready, in order.
    Ready(Vec<T>),
    /// The item is held until the ones before it arrive.
    Held,
    /// The index was already released or is already held; the item was dropped.
    Duplicate,
    /// The index is beyond the window; the item is handed back untouched.
    Full(T),
}

/// A fixed window of slots starting at the next index to release.
///
/// Slot `i` holds the item for index `next + i`. The window never grows: an index at or beyond
/// `next + capacity` is refused, so memory is bounded whatever order results arrive in.
#[derive(Debug)]
pub struct ReorderBuffer<T> {
    next: u64,
    slots: VecDeque<Option<T>>,
    held: usize,
}

impl<T> ReorderBuffer<T> {
    /// A buffer releasing from index 0 and holding at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Self::starting_at(0, capacity)
    }

    /// A buffer whose first item has index `first` (a resumed job's first frame).
    pub fn starting_at(first: u64, capacity: usize) -> Self {
        assert!(capacity > 0, "a reorder window needs at least one slot");
        ReorderBuffer { next: first, slots: (0..capacity).map(|_| None).collect(), held: 0 }
    }

    /// The index the next released item will have.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// How many items are held, waiting for an earlier one.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Offers the item for `index`.
    pub fn push(&mut self, index: u64, item: T) -> Push<T> {
        if index < self.next {
            return Push::Duplicate;
        }
        let offset = index - self.next;
        if offset >= self.slots.len() as u64 {
            return Push::Full(item);
        }
        let slot = &mut self.slots[offset as usize];
        if slot.is_some() {
            return Push::Duplicate;
        }
        *slot = Some(item);
        self.held += 1;
        if offset > 0 {
            return Push::Held;
        }
        let mut ready = Vec::new();
        while let Some(Some(_)) = self.slots.front() {
            // The loop condition just saw a filled front slot.
            let item = self.slots.pop_front().flatten().expect("front slot is filled");
            self.slots.push_back(None);
            ready.push(item);
        }
        self.next += ready.len() as u64;
        self.held -= ready.len();
        Push::Ready(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_items_are_released_at_once() {
        let mut r = ReorderBuffer::new(4);
        for i in 0..10 {
            assert_eq!(r.push(i, i), Push::Ready(vec![i]));
        }
        assert_eq!(r.next_index(), 10);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn out_of_order_items_wait_for_the_gap() {
        let mut r = ReorderBuffer::new(4);
        assert_eq!(r.push(2, "c"), Push::Held);
        assert_eq!(r.push(1, "b"), Push::Held);
        assert_eq!(r.held(), 2);
        assert_eq!(r.push(0, "a"), Push::Ready(vec!["a", "b", "c"]));
        assert_eq!(r.push(4, "e"), Push::Held);
        assert_eq!(r.push(3, "d"), Push::Ready(vec!["d", "e"]));
        assert_eq!(r.next_index(), 5);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn duplicates_are_dropped_whether_released_or_held() {
        let mut r = ReorderBuffer::new(4);
        assert_eq!(r.push(0, 0), Push::Ready(vec![0]));
        assert_eq!(r.push(0, 99), Push::Duplicate, "already released");
        assert_eq!(r.push(2, 2), Push::Held);
        assert_eq!(r.push(2, 99), Push::Duplicate, "already held");
        assert_eq!(r.push(1, 1), Push::Ready(vec![1, 2]), "the held original wins");
    }

    #[test]
    fn full_window_hands_the_item_back() {
        let mut r = ReorderBuffer::new(3);
        assert_eq!(r.push(2, 2), Push::Held);
        assert_eq!(r.push(3, 3), Push::Full(3), "index 3 is outside [0, 3)");
        assert_eq!(r.held(), 1);
        assert_eq!(r.push(0, 0), Push::Ready(vec![0]));
        assert_eq!(r.push(3, 3), Push::Held, "the window moved to [1, 4)");
        assert_eq!(r.push(1, 1), Push::Ready(vec![1, 2, 3]));
    }

    #[test]
    fn any_arrival_order_releases_everything_in_order() {
        // A fixed shuffle of 0..64 where no item is more than 7 ahead of the release point.
        let mut order: Vec<u64> = (0..64).collect();
        for chunk in order.chunks_mut(8) {
            chunk.reverse();
        }
        let mut r = ReorderBuffer::new(8);
        let mut out = Vec::new();
        for i in order {
            match r.push(i, i) {
                Push::Ready(items) => out.extend(items),
                Push::Held => {}
                other => panic!("unexpected {other:?} for {i}"),
            }
        }
        assert_eq!(out, (0..64).collect::<Vec<_>>());
    }
}
