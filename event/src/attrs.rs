//! [`Attrs`]: an event's attributes, sorted by key, in one text buffer.
//!
//! Every normalized record carries ten to twenty attributes. Kept as a map of
//! owned strings, each costs two allocations when the record is normalized
//! and two frees when the event is dropped, on every record vigil receives.
//! Here all keys and values share one `String`, with a list of where each
//! entry lies: two allocations per event, however many attributes.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// Where one entry lies in the text: key `[key, value)`, value `[value, end)`.
#[derive(Clone, Copy, Debug)]
struct Span {
    key: u32,
    value: u32,
    end: u32,
}

/// String attributes of an event: unique keys, iterated in key order (as a
/// `BTreeMap<String, String>` would be, which is how they serialize).
#[derive(Clone, Default)]
pub struct Attrs {
    text: String,
    spans: Vec<Span>,
}

impl Attrs {
    pub fn new() -> Attrs {
        Attrs::default()
    }

    /// Room for `entries` attributes of `bytes` bytes of keys and values in all.
    pub fn with_capacity(entries: usize, bytes: usize) -> Attrs {
        Attrs {
            text: String::with_capacity(bytes),
            spans: Vec::with_capacity(entries),
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes of keys and values held, including any left by replaced values.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Bytes of keys, values and entry spans: what the attributes take on the
    /// heap, counted from their contents (not the buffers' spare capacity).
    pub fn heap_size(&self) -> usize {
        self.text.len() + self.spans.len() * std::mem::size_of::<Span>()
    }

    fn key_at(&self, s: &Span) -> &str {
        &self.text[s.key as usize..s.value as usize]
    }

    fn value_at(&self, s: &Span) -> &str {
        &self.text[s.value as usize..s.end as usize]
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.spans.binary_search_by(|s| self.key_at(s).cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).ok().map(|i| self.value_at(&self.spans[i]))
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Entries in key order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            attrs: self,
            spans: self.spans.iter(),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter().map(|(k, _)| k)
    }

    fn append(&mut self, key: &str, value: &str) -> Span {
        self.append_with(key, |text| text.push_str(value))
    }

    /// Appends `key` and the value `write` adds to the text; where they lie.
    fn append_with(&mut self, key: &str, write: impl FnOnce(&mut String)) -> Span {
        let start = self.text.len();
        self.text.push_str(key);
        write(&mut self.text);
        let end = self.text.len();
        assert!(
            u32::try_from(end).is_ok(),
            "an event's attributes exceed 4 GiB"
        );
        Span {
            key: start as u32,
            value: (start + key.len()) as u32,
            end: end as u32,
        }
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        let span = self.append(key, value);
        match self.find(key) {
            // The old bytes stay in the buffer until the next `retain`.
            Ok(i) => self.spans[i] = span,
            Err(i) => self.spans.insert(i, span),
        }
    }

    /// Removes `key`; true when it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.find(key) {
            Ok(i) => {
                self.spans.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// Keeps the entries for which `keep(key, value)` holds, visited in key
    /// order. When any is dropped, the kept ones move to buffers of their
    /// exact size: what is held for long stays small.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        let before = self.spans.len();
        let text = &self.text;
        // In place: no list of the kept entries is allocated.
        self.spans.retain(|s| {
            keep(
                &text[s.key as usize..s.value as usize],
                &text[s.value as usize..s.end as usize],
            )
        });
        if self.spans.len() < before {
            *self = self.copy_of(&self.spans);
        }
    }

    /// The entries at `spans` (in that order), in buffers of their exact size.
    fn copy_of(&self, spans: &[Span]) -> Attrs {
        let bytes = spans.iter().map(|s| (s.end - s.key) as usize).sum();
        let mut out = Attrs::with_capacity(spans.len(), bytes);
        for s in spans {
            let span = out.append(self.key_at(s), self.value_at(s));
            out.spans.push(span);
        }
        out
    }

    /// Sorts entries pushed in any order by key; of equal keys the one
    /// pushed last stays, as a map's `insert` would leave it.
    fn settle(&mut self) {
        // Stable: equal keys keep their push order, so the last is the newest.
        let text = &self.text;
        let key = |s: &Span| &text[s.key as usize..s.value as usize];
        if self.spans.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
            return;
        }
        sort_last_wins(&mut self.spans, key);
    }

    /// Builds attributes from pairs in any order: one buffer for the text,
    /// one sort of the entries. Of repeated keys the last wins.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Attrs {
        let mut out = Attrs::default();
        out.extend(pairs);
        out
    }

    /// Builds attributes from `entries` given in strictly ascending key
    /// order, each value appended to the text by `write`; `bytes` is the
    /// room to reserve for keys and values. `None` as soon as a key is not
    /// greater than the one before (out of order or repeated): the caller
    /// sorts and tries again. No sort and no second copy: the receivers
    /// build every event's attributes this way.
    pub fn from_ascending<'k, T>(
        entries: impl ExactSizeIterator<Item = (&'k str, T)>,
        bytes: usize,
        mut write: impl FnMut(T, &mut String),
    ) -> Option<Attrs> {
        let mut out = Attrs::with_capacity(entries.len(), bytes);
        let mut prev: Option<&str> = None;
        for (key, value) in entries {
            if prev.is_some_and(|p| p >= key) {
                return None;
            }
            prev = Some(key);
            let span = out.append_with(key, |text| write(value, text));
            out.spans.push(span);
        }
        Some(out)
    }

    /// Adds entries in any order, sorted once at [`AttrsBuilder::finish`].
    pub fn builder(self) -> AttrsBuilder {
        AttrsBuilder { attrs: self }
    }
}

/// Sorts `items` by `key` and, of items with equal keys, keeps the one that
/// came last, as a map's `insert` would leave them.
pub fn sort_last_wins<'k, T>(items: &mut Vec<T>, key: impl Fn(&T) -> &'k str) {
    // Stable: equal keys keep their order, so the last is the newest.
    items.sort_by(|a, b| key(a).cmp(key(b)));
    // `later` is dropped when it repeats `earlier`'s key: it wins first.
    items.dedup_by(|later, earlier| {
        let same = key(later) == key(earlier);
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });
}

/// Adds entries to [`Attrs`] in any order; [`AttrsBuilder::finish`] sorts
/// them once. Of repeated keys the last added wins.
pub struct AttrsBuilder {
    attrs: Attrs,
}

impl AttrsBuilder {
    pub fn push(&mut self, key: &str, value: &str) {
        let span = self.attrs.append(key, value);
        self.attrs.spans.push(span);
    }

    pub fn finish(mut self) -> Attrs {
        self.attrs.settle();
        self.attrs
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Extend<(K, V)> for Attrs {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, pairs: I) {
        let mut b = std::mem::take(self).builder();
        for (k, v) in pairs {
            b.push(k.as_ref(), v.as_ref());
        }
        *self = b.finish();
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Attrs {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Attrs {
        Attrs::from_pairs(pairs)
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> From<[(K, V); N]> for Attrs {
    fn from(pairs: [(K, V); N]) -> Attrs {
        Attrs::from_pairs(pairs)
    }
}

impl PartialEq for Attrs {
    fn eq(&self, other: &Attrs) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Attrs {}

impl fmt::Debug for Attrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Entries of [`Attrs`] in key order.
#[derive(Clone)]
pub struct Iter<'a> {
    attrs: &'a Attrs,
    spans: std::slice::Iter<'a, Span>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.spans.next()?;
        Some((self.attrs.key_at(s), self.attrs.value_at(s)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.spans.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Attrs {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl Serialize for Attrs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Attrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Attrs, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Attrs;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attrs, A::Error> {
                let mut b = Attrs::default().builder();
                while let Some((k, v)) =
                    map.next_entry::<std::borrow::Cow<'de, str>, std::borrow::Cow<'de, str>>()?
                {
                    b.push(&k, &v);
                }
                Ok(b.finish())
            }
        }
        d.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Random operations on `Attrs` and on a `BTreeMap` give the same map.
    #[test]
    fn behaves_as_a_sorted_map() {
        let mut next = crate::xorshift(7);
        for _ in 0..300 {
            let mut a = Attrs::new();
            let mut m: BTreeMap<String, String> = BTreeMap::new();
            let pairs: Vec<(String, String)> = (0..next() % 12)
                .map(|_| {
                    (
                        format!("k{}", next() % 9),
                        "v".repeat((next() % 4) as usize),
                    )
                })
                .collect();
            a.extend(pairs.iter().cloned());
            m.extend(pairs.iter().cloned());
            for _ in 0..next() % 6 {
                let k = format!("k{}", next() % 9);
                match next() % 3 {
                    0 => {
                        let v = format!("x{}", next() % 100);
                        a.insert(&k, &v);
                        m.insert(k, v);
                    }
                    1 => assert_eq!(a.remove(&k), m.remove(&k).is_some()),
                    _ => {
                        let drop_digit = (next() % 9).to_string();
                        a.retain(|k, _| !k.ends_with(&drop_digit));
                        m.retain(|k, _| !k.ends_with(&drop_digit));
                    }
                }
            }
            let got: Vec<(&str, &str)> = a.iter().collect();
            let want: Vec<(&str, &str)> = m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(got, want, "from {pairs:?}");
            assert_eq!(a.len(), m.len());
            for (k, v) in &m {
                assert_eq!(a.get(k), Some(v.as_str()));
            }
            assert_eq!(a.get("absent"), None);
        }
    }

    #[test]
    fn retain_shrinks_to_what_is_kept() {
        let mut a: Attrs = [("prompt", "x".repeat(10_000)), ("to_mode", "plan".into())].into();
        a.insert("to_mode", "bypassPermissions");
        a.retain(|k, _| k == "to_mode");
        assert_eq!(a.text_len(), "to_modebypassPermissions".len());
        assert_eq!(a.get("to_mode"), Some("bypassPermissions"));
    }

    #[test]
    fn built_from_ascending_entries_or_refused() {
        let write = |v: i64, out: &mut String| out.push_str(&v.to_string());
        let a = Attrs::from_ascending([("a", 1), ("b", 22), ("c", 3)].into_iter(), 0, write)
            .expect("ascending");
        assert_eq!(a, Attrs::from([("c", "3"), ("a", "1"), ("b", "22")]));
        assert_eq!(a.get("b"), Some("22"));
        assert_eq!(a.text_len(), "a1b22c3".len());
        for refused in [
            [("a", 1), ("c", 2), ("b", 3)],
            [("a", 1), ("b", 2), ("b", 3)],
        ] {
            assert!(Attrs::from_ascending(refused.into_iter(), 8, write).is_none());
        }
        let empty = Attrs::from_ascending(std::iter::empty::<(&str, i64)>(), 0, write);
        assert!(empty.is_some_and(|a| a.is_empty()));
    }

    #[test]
    fn serializes_as_a_map_and_reads_back() {
        let a: Attrs = [("b", "2"), ("a", "1"), ("b", "3")].into();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"a":"1","b":"3"}"#);
        let back: Attrs = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        let err = serde_json::from_str::<Attrs>(r#"{"a":1}"#).unwrap_err();
        assert!(err.to_string().contains("string"), "{err}");
    }
}
