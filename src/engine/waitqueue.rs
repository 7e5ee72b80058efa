//! Per-key FIFO queues of waiters, as plain Rust with no Redis in it.
//!
//! Every queue operation the server performs is O(1): push at the tail, pop
//! the oldest, and remove any waiter by id (timeouts, disconnects,
//! `CLIENT KILL`). That is what keeps a handoff with 100,000 waiters queued
//! as cheap as one with a single waiter. Waiters live in one slab as a
//! doubly linked list per key; ids carry a generation so an id that
//! outlived its waiter (a late timer, a late disconnect) never matches the
//! waiter that reused the slot.
//!
//! Each queue also carries a small piece of glue-owned metadata `M` (the
//! expiry timer armed for the key); it is handed back when the queue's last
//! waiter leaves, so the glue can cancel whatever it refers to.

use std::collections::HashMap;
use std::hash::Hash;

/// Identifies one waiter for as long as it is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WaiterId(u64);

impl WaiterId {
    fn new(slot: usize, generation: u32) -> Self {
        WaiterId(((generation as u64) << 32) | slot as u64)
    }
    fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The id as a plain integer (timer data is a pointer-sized integer).
    pub fn to_raw(self) -> u64 {
        self.0
    }
    pub fn from_raw(raw: u64) -> Self {
        WaiterId(raw)
    }
}

#[derive(Debug)]
struct Node<K, W> {
    key: K,
    value: W,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(Debug)]
struct Slot<K, W> {
    generation: u32,
    node: Option<Node<K, W>>,
}

#[derive(Debug)]
struct Queue<M> {
    head: usize,
    tail: usize,
    len: usize,
    meta: M,
}

/// The queue for `key` is full (`reservation.max-waiters`).
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

/// A waiter taken out of its queue, with the queue's metadata when it was
/// the last one (the queue is gone then).
#[derive(Debug, PartialEq, Eq)]
pub struct Removed<K, W, M> {
    pub id: WaiterId,
    pub key: K,
    pub value: W,
    pub emptied: Option<M>,
}

#[derive(Debug)]
pub struct WaitQueues<K, W, M> {
    slots: Vec<Slot<K, W>>,
    free: Vec<usize>,
    queues: HashMap<K, Queue<M>>,
    total: usize,
    // Generations come from one counter, not per slot, so they stay unique
    // even after the slab is dropped and rebuilt.
    next_generation: u32,
}

impl<K, W, M> Default for WaitQueues<K, W, M> {
    fn default() -> Self {
        WaitQueues {
            slots: Vec::new(),
            free: Vec::new(),
            queues: HashMap::new(),
            total: 0,
            next_generation: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, W, M: Default> WaitQueues<K, W, M> {
    /// Waiters queued across all keys.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Waiters queued on `key`.
    pub fn len(&self, key: &K) -> usize {
        self.queues.get(key).map_or(0, |q| q.len)
    }

    /// Keys that have at least one waiter.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.queues.keys()
    }

    pub fn meta_mut(&mut self, key: &K) -> Option<&mut M> {
        self.queues.get_mut(key).map(|q| &mut q.meta)
    }

    /// Append a waiter at the tail of `key`'s queue, unless it already has
    /// `max_len` waiters.
    pub fn push(&mut self, key: K, value: W, max_len: usize) -> Result<WaiterId, QueueFull> {
        let current_len = self.len(&key);
        if current_len >= max_len {
            return Err(QueueFull);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    node: None,
                });
                self.slots.len() - 1
            }
        };
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        self.slots[slot].generation = generation;
        let prev = self.queues.get(&key).map(|q| q.tail);
        if let Some(prev) = prev {
            if let Some(node) = self.slots[prev].node.as_mut() {
                node.next = Some(slot);
            }
        }
        self.slots[slot].node = Some(Node {
            key: key.clone(),
            value,
            prev,
            next: None,
        });
        let queue = self.queues.entry(key).or_insert_with(|| Queue {
            head: slot,
            tail: slot,
            len: 0,
            meta: M::default(),
        });
        queue.tail = slot;
        queue.len += 1;
        self.total += 1;
        Ok(WaiterId::new(slot, generation))
    }

    /// The waiter behind `id`, if it is still queued.
    pub fn get(&self, id: WaiterId) -> Option<(&K, &W)> {
        let slot = self.slots.get(id.slot())?;
        if slot.generation != id.generation() {
            return None;
        }
        slot.node.as_ref().map(|n| (&n.key, &n.value))
    }

    pub fn get_mut(&mut self, id: WaiterId) -> Option<&mut W> {
        let slot = self.slots.get_mut(id.slot())?;
        if slot.generation != id.generation() {
            return None;
        }
        slot.node.as_mut().map(|n| &mut n.value)
    }

    /// The oldest waiter of `key`, without removing it.
    pub fn front(&self, key: &K) -> Option<(WaiterId, &W)> {
        let queue = self.queues.get(key)?;
        let slot = &self.slots[queue.head];
        slot.node
            .as_ref()
            .map(|n| (WaiterId::new(queue.head, slot.generation), &n.value))
    }

    /// Remove and return the oldest waiter of `key`.
    pub fn pop_front(&mut self, key: &K) -> Option<Removed<K, W, M>> {
        let (id, _) = self.front(key)?;
        self.remove(id)
    }

    /// Remove a waiter wherever it is in its queue: O(1).
    pub fn remove(&mut self, id: WaiterId) -> Option<Removed<K, W, M>> {
        let slot_index = id.slot();
        let slot = self.slots.get_mut(slot_index)?;
        if slot.generation != id.generation() {
            return None;
        }
        let node = slot.node.take()?;
        self.free.push(slot_index);
        self.total -= 1;

        if let Some(prev) = node.prev {
            if let Some(p) = self.slots[prev].node.as_mut() {
                p.next = node.next;
            }
        }
        if let Some(next) = node.next {
            if let Some(n) = self.slots[next].node.as_mut() {
                n.prev = node.prev;
            }
        }
        let mut emptied = None;
        if let Some(queue) = self.queues.get_mut(&node.key) {
            queue.len -= 1;
            if queue.len == 0 {
                emptied = self.queues.remove(&node.key).map(|q| q.meta);
            } else {
                if queue.head == slot_index {
                    queue.head = node.next.unwrap_or(queue.head);
                }
                if queue.tail == slot_index {
                    queue.tail = node.prev.unwrap_or(queue.tail);
                }
            }
        }
        if self.queues.is_empty() {
            // Give the memory of a drained burst of waiters back.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        Some(Removed {
            id,
            key: node.key,
            value: node.value,
            emptied,
        })
    }

    /// The waiters of `key`, oldest first.
    pub fn iter(&self, key: &K) -> impl Iterator<Item = (WaiterId, &W)> {
        let mut cursor = self.queues.get(key).map(|q| q.head);
        std::iter::from_fn(move || {
            let slot_index = cursor?;
            let slot = &self.slots[slot_index];
            let node = slot.node.as_ref()?;
            cursor = node.next;
            Some((WaiterId::new(slot_index, slot.generation), &node.value))
        })
    }

    /// Remove every waiter of `key` (oldest first): the key turned into
    /// another type and they all get an error.
    pub fn drain(&mut self, key: &K) -> Vec<Removed<K, W, M>> {
        let ids: Vec<WaiterId> = self.iter(key).map(|(id, _)| id).collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Heap bytes held by the queues (for `INFO reservation`).
    pub fn heap_size(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot<K, W>>()
            + self.free.capacity() * std::mem::size_of::<usize>()
            + self.queues.capacity() * (std::mem::size_of::<(K, Queue<M>)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    type Queues = WaitQueues<&'static str, u32, u8>;

    #[test]
    fn fifo_per_key() {
        let mut q = Queues::default();
        for i in 0..5 {
            q.push("a", i, 10).unwrap();
            q.push("b", 100 + i, 10).unwrap();
        }
        assert_eq!(q.total(), 10);
        let order: Vec<u32> = std::iter::from_fn(|| q.pop_front(&"a").map(|r| r.value)).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert_eq!(q.len(&"a"), 0);
        assert_eq!(q.len(&"b"), 5);
    }

    #[test]
    fn remove_from_the_middle_keeps_order() {
        let mut q = Queues::default();
        let ids: Vec<WaiterId> = (0..5).map(|i| q.push("k", i, 10).unwrap()).collect();
        assert_eq!(q.remove(ids[2]).map(|r| r.value), Some(2));
        assert_eq!(q.remove(ids[0]).map(|r| r.value), Some(0));
        assert_eq!(q.remove(ids[4]).map(|r| r.value), Some(4));
        let rest: Vec<u32> = q.iter(&"k").map(|(_, v)| *v).collect();
        assert_eq!(rest, vec![1, 3]);
        assert_eq!(q.remove(ids[2]), None, "removing twice is a no-op");
    }

    #[test]
    fn stale_ids_never_match_a_reused_slot() {
        let mut q = Queues::default();
        let old = q.push("k", 1, 10).unwrap();
        let _keep = q.push("other", 9, 10).unwrap();
        q.remove(old).unwrap();
        let new = q.push("k", 2, 10).unwrap();
        assert_ne!(old, new);
        assert_eq!(q.remove(old), None);
        assert_eq!(q.get(new).map(|(_, v)| *v), Some(2));
    }

    #[test]
    fn meta_comes_back_when_the_queue_empties() {
        let mut q = Queues::default();
        let a = q.push("k", 1, 10).unwrap();
        let b = q.push("k", 2, 10).unwrap();
        *q.meta_mut(&"k").unwrap() = 7;
        assert_eq!(q.remove(a).unwrap().emptied, None);
        assert_eq!(q.remove(b).unwrap().emptied, Some(7));
        assert!(q.meta_mut(&"k").is_none());
        assert!(q.is_empty());
    }

    #[test]
    fn full_queues_refuse() {
        let mut q = Queues::default();
        q.push("k", 1, 2).unwrap();
        q.push("k", 2, 2).unwrap();
        assert_eq!(q.push("k", 3, 2), Err(QueueFull));
        assert!(q.push("j", 3, 2).is_ok());
    }

    #[test]
    fn drain_returns_everyone_in_order() {
        let mut q = Queues::default();
        for i in 0..4 {
            q.push("k", i, 10).unwrap();
        }
        let drained: Vec<u32> = q.drain(&"k").into_iter().map(|r| r.value).collect();
        assert_eq!(drained, vec![0, 1, 2, 3]);
        assert!(q.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u8),
        Pop(u8),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3).prop_map(Op::Push),
            (0u8..3).prop_map(Op::Pop),
            (0usize..64).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The slab agrees with a model of one VecDeque per key.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(op(), 0..200)) {
            let mut q: WaitQueues<u8, u32, ()> = WaitQueues::default();
            let mut model: HashMap<u8, VecDeque<(WaiterId, u32)>> = HashMap::new();
            let mut issued: Vec<WaiterId> = Vec::new();
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Push(k) => {
                        let id = q.push(k, next, 1000).unwrap();
                        model.entry(k).or_default().push_back((id, next));
                        issued.push(id);
                        next += 1;
                    }
                    Op::Pop(k) => {
                        let got = q.pop_front(&k).map(|r| (r.id, r.value));
                        let want = model.get_mut(&k).and_then(VecDeque::pop_front);
                        prop_assert_eq!(got, want);
                    }
                    Op::Remove(i) => {
                        if let Some(&id) = issued.get(i) {
                            let got = q.remove(id).map(|r| r.value);
                            let mut want = None;
                            for queue in model.values_mut() {
                                if let Some(pos) = queue.iter().position(|(qid, _)| *qid == id) {
                                    want = queue.remove(pos).map(|(_, v)| v);
                                }
                            }
                            prop_assert_eq!(got, want);
                        }
                    }
                }
                let total: usize = model.values().map(VecDeque::len).sum();
                prop_assert_eq!(q.total(), total);
                for (k, queue) in &model {
                    let got: Vec<u32> = q.iter(k).map(|(_, v)| *v).collect();
                    let want: Vec<u32> = queue.iter().map(|(_, v)| *v).collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
