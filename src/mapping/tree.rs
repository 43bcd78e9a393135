//! A message parsed once for normalization ([`Node`]), and what the compiled JSONPath matcher
//! needs of a JSON tree ([`Tree`]), so the same matcher walks a `serde_json::Value` (template
//! files, calculated templates, the CLI) or a `Node` (every message the job reads).
//!
//! A `Node` borrows its strings from the message bytes and keeps object members in a slice:
//! `serde_json::Value` with `preserve_order` hashes every key with SipHash on insert and on
//! every lookup, which was a third of the time spent normalizing a bedside message
//! (docs/performance.md). Members keep document order, and a repeated key replaces the
//! earlier value in its place, as `serde_json::Value` does.
//!
//! A message's nodes live in an arena ([`Bump`]) that the caller resets for the next
//! message: growing each object's and array's vector, freeing them and walking the tree to
//! drop it were 4 % of a replay's instructions, and an arena makes them a pointer bump and
//! nothing.

use bumpalo::collections::Vec as BumpVec;
use bumpalo::Bump;
use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;

/// A JSON value borrowing from the bytes it was parsed from and from its arena.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as `serde_json` reads it.
    Number(Number),
    /// A string (from the message, or from the arena when it had escapes).
    String(&'a str),
    /// An array.
    Array(&'a [Node<'a>]),
    /// An object, members in document order.
    Object(&'a [(&'a str, Node<'a>)]),
}

/// A scalar as filters compare it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number, compared as a double (as Newtonsoft does).
    Num(f64),
    /// A string.
    Str(&'a str),
    /// An array or object: equal to nothing.
    Composite,
}

/// What the compiled JSONPath matcher reads of a JSON tree.
pub trait Tree: Sized {
    /// The member `name` of an object; `None` for anything else.
    fn member(&self, name: &str) -> Option<&Self>;
    /// The items of an array.
    fn items(&self) -> Option<&[Self]>;
    /// An object's members in document order (nothing for other values).
    fn members(&self) -> impl Iterator<Item = (&str, &Self)>;
    /// An object's member values or an array's items, in document order.
    fn children(&self) -> impl Iterator<Item = &Self>;
    /// The value as a filter compares it.
    fn scalar(&self) -> Scalar<'_>;
    /// The value as the connector stores a selected token (`None` for null): strings
    /// verbatim, numbers in plain decimal, booleans as .NET prints them, JSON otherwise.
    fn text(&self) -> Option<String>;
    /// [`Tree::text`], borrowed where the tree holds it as it is (strings).
    fn text_cow(&self) -> Option<Cow<'_, str>> {
        match self.scalar() {
            Scalar::Str(s) => Some(Cow::Borrowed(s)),
            _ => self.text().map(Cow::Owned),
        }
    }
}

impl Tree for Value {
    fn member(&self, name: &str) -> Option<&Self> {
        self.as_object()?.get(name)
    }

    fn items(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }

    fn members(&self) -> impl Iterator<Item = (&str, &Self)> {
        (self.as_object().into_iter()).flat_map(|o| o.iter().map(|(k, v)| (k.as_str(), v)))
    }

    fn children(&self) -> impl Iterator<Item = &Self> {
        let (object, array) = match self {
            Value::Object(o) => (Some(o.values()), None),
            Value::Array(a) => (None, Some(a.iter())),
            _ => (None, None),
        };
        object
            .into_iter()
            .flatten()
            .chain(array.into_iter().flatten())
    }

    fn scalar(&self) -> Scalar<'_> {
        match self {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(n) => Scalar::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Scalar::Str(s),
            _ => Scalar::Composite,
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(number_text(n)),
            Value::Bool(b) => Some(bool_text(*b)),
            other => Some(other.to_string()),
        }
    }
}

impl Tree for Node<'_> {
    fn member(&self, name: &str) -> Option<&Self> {
        match self {
            Node::Object(members) => members
                .iter()
                .find(|(k, _)| same_key(k, name))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn items(&self) -> Option<&[Self]> {
        match self {
            Node::Array(a) => Some(a),
            _ => None,
        }
    }

    fn members(&self) -> impl Iterator<Item = (&str, &Self)> {
        let members: &[(&str, Node<'_>)] = match self {
            Node::Object(m) => m,
            _ => &[],
        };
        members.iter().map(|(k, v)| (*k, v))
    }

    fn children(&self) -> impl Iterator<Item = &Self> {
        let (object, array): (&[(&str, Node<'_>)], &[Node<'_>]) = match self {
            Node::Object(m) => (m, &[]),
            Node::Array(a) => (&[], a),
            _ => (&[], &[]),
        };
        object.iter().map(|(_, v)| v).chain(array)
    }

    fn scalar(&self) -> Scalar<'_> {
        match self {
            Node::Null => Scalar::Null,
            Node::Bool(b) => Scalar::Bool(*b),
            Node::Number(n) => Scalar::Num(n.as_f64().unwrap_or(f64::NAN)),
            Node::String(s) => Scalar::Str(s),
            _ => Scalar::Composite,
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            Node::Null => None,
            Node::String(s) => Some(s.to_string()),
            Node::Number(n) => Some(number_text(n)),
            Node::Bool(b) => Some(bool_text(*b)),
            other => Some(serde_json::to_string(other).expect("a tree serializes")),
        }
    }
}

/// Whether two member names are equal, told apart by length and first byte before the
/// bytes are compared: a message's members are short and many share a length, and the
/// call to compare them was most of matching a name (`valgrind --tool=callgrind`).
#[inline]
pub fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

/// .NET prints whole doubles without a fraction (`50`, not `50.0`).
fn number_text(n: &Number) -> String {
    match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => i.to_string(),
        (_, Some(u), _) => u.to_string(),
        (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        (_, _, Some(f)) => format!("{f}"),
        _ => n.to_string(),
    }
}

fn bool_text(b: bool) -> String {
    if b { "True" } else { "False" }.to_string()
}

/// Parses a message payload as JSON: what `serde_json::from_slice` gives, but checked as
/// UTF-8 once whole and then read as text (reading bytes checks every string on its own: 2.7 %
/// of a replay's instructions). Invalid UTF-8 is read as bytes, for the error serde_json
/// gives it.
pub fn from_payload<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    seeded_from_payload(bytes, std::marker::PhantomData::<T>)
}

/// [`from_payload`] through a seed (a [`Node`] into its arena): the whole input, then its
/// end, as `serde_json::from_str` reads it.
fn seeded_from_payload<'a, S: DeserializeSeed<'a>>(
    bytes: &'a [u8],
    seed: S,
) -> Result<S::Value, serde_json::Error> {
    fn read<'a, R: serde_json::de::Read<'a>, S: DeserializeSeed<'a>>(
        mut de: serde_json::Deserializer<R>,
        seed: S,
    ) -> Result<S::Value, serde_json::Error> {
        let value = seed.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => read(serde_json::Deserializer::from_str(text), seed),
        Err(_) => read(serde_json::Deserializer::from_slice(bytes), seed),
    }
}

impl<'a> Node<'a> {
    /// Parses message bytes into `arena`, borrowing strings from the bytes: what
    /// [`from_payload`] reads, with the same errors.
    pub fn parse_in(bytes: &'a [u8], arena: &'a Bump) -> Result<Self, serde_json::Error> {
        seeded_from_payload(bytes, Seed(arena))
    }

    /// An object of `members`, in their order, in `arena`.
    pub fn object_in(
        arena: &'a Bump,
        members: impl IntoIterator<Item = (&'a str, Node<'a>), IntoIter: ExactSizeIterator>,
    ) -> Self {
        Node::Object(arena.alloc_slice_fill_iter(members))
    }

    /// An object borrowing a map's members (message properties), in the map's order.
    pub fn from_map(map: &'a Map<String, Value>, arena: &'a Bump) -> Self {
        Node::object_in(
            arena,
            map.iter()
                .map(|(k, v)| (k.as_str(), Node::from_value(v, arena))),
        )
    }

    /// The same value, borrowed.
    pub fn from_value(v: &'a Value, arena: &'a Bump) -> Self {
        match v {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n.clone()),
            Value::String(s) => Node::String(s),
            Value::Array(a) => Node::Array(
                arena.alloc_slice_fill_iter(a.iter().map(|v| Node::from_value(v, arena))),
            ),
            Value::Object(o) => Node::from_map(o, arena),
        }
    }

    /// The same value as a `serde_json::Value`.
    pub fn to_value(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(n.clone()),
            Node::String(s) => Value::String(s.to_string()),
            Node::Array(a) => Value::Array(a.iter().map(Node::to_value).collect()),
            Node::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

impl Serialize for Node<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Number(n) => n.serialize(s),
            Node::String(v) => s.serialize_str(v),
            Node::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a.iter() {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Node::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m.iter() {
                    map.serialize_entry(*k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Objects up to this many members find a repeated key by comparing; larger ones by hashing.
const LINEAR_MEMBERS: usize = 32;

/// Reads one JSON value into the arena.
#[derive(Clone, Copy)]
struct Seed<'a>(&'a Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for Seed<'a> {
    type Value = Node<'a>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node<'a>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Seed<'a> {
    type Value = Node<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node<'a>, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node<'a>, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Node<'a>, E> {
        Ok(Node::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Node<'a>, E> {
        Ok(Node::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Node<'a>, E> {
        Ok(Node::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Node<'a>, E> {
        Ok(Number::from_f64(n).map_or(Node::Null, Node::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Node<'a>, E> {
        Ok(Node::String(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Node<'a>, E> {
        Ok(Node::String(self.0.alloc_str(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'a>, A::Error> {
        let mut items = BumpVec::with_capacity_in(seq.size_hint().unwrap_or(0), self.0);
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Node::Array(items.into_bump_slice()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'a>, A::Error> {
        let mut members: BumpVec<'a, (&'a str, Node<'a>)> = BumpVec::new_in(self.0);
        let mut repeated = false;
        while let Some(k) = map.next_key_seed(KeySeed(self.0))? {
            let v = map.next_value_seed(self)?;
            if members.len() < LINEAR_MEMBERS {
                if let Some(m) = members.iter_mut().find(|(m, _)| same_key(m, k)) {
                    m.1 = v;
                    continue;
                }
            } else {
                repeated = true;
            }
            members.push((k, v));
        }
        if repeated {
            dedup_members(&mut members);
        }
        Ok(Node::Object(members.into_bump_slice()))
    }
}

/// A large object's repeated keys: the last value, in the first one's place.
fn dedup_members<'a>(members: &mut BumpVec<'a, (&'a str, Node<'a>)>) {
    let mut first: std::collections::HashMap<&str, usize> = Default::default();
    let mut keep = vec![true; members.len()];
    for i in 0..members.len() {
        match first.get(members[i].0) {
            Some(&j) => {
                members[j].1 = std::mem::replace(&mut members[i].1, Node::Null);
                keep[i] = false;
            }
            None => {
                first.insert(members[i].0, i);
            }
        }
    }
    let mut i = 0;
    members.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

/// An object key, borrowed from the message unless it had escapes.
#[derive(Clone, Copy)]
struct KeySeed<'a>(&'a Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for KeySeed<'a> {
    type Value = &'a str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'a str, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for KeySeed<'a> {
    type Value = &'a str;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<&'a str, E> {
        Ok(s)
    }

    fn visit_str<E>(self, s: &str) -> Result<&'a str, E> {
        Ok(self.0.alloc_str(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn same_key_is_equality(a in "[ab\u{e9}]{0,3}", b in "[ab\u{e9}]{0,3}") {
            proptest::prop_assert_eq!(same_key(&a, &b), a == b);
        }
    }

    #[test]
    fn parses_as_serde_json_does_including_repeated_keys() {
        let mut big = String::from("{");
        for i in 0..40 {
            big.push_str(&format!("\"k{}\": {i},", i % 35));
        }
        big.push_str("\"z\": 1}");
        for text in [
            r#"{"a": 1, "b": [true, null, 2.5, -3, "x\"y"], "a": {"c": "d"}, "e": 1e3}"#,
            r#"[18446744073709551615, 0.1, "", {}]"#,
            // Escaped keys and strings: copied into the arena.
            r#"{"k\u0065y": "v\u00e9", "k\"q": [{"\n": null}], "key": 2}"#,
            &big,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            let arena = Bump::new();
            let node = Node::parse_in(text.as_bytes(), &arena).unwrap();
            assert_eq!(node.to_value(), value, "{text}");
            assert_eq!(serde_json::to_string(&node).unwrap(), value.to_string());
            assert_eq!(Node::from_value(&value, &arena), node);
        }
        assert!(Node::parse_in(b"{\"a\": }", &Bump::new()).is_err());
        // Invalid UTF-8 fails as serde_json fails it.
        assert_eq!(
            Node::parse_in(b"\"\xff\"", &Bump::new())
                .unwrap_err()
                .to_string(),
            serde_json::from_slice::<Value>(b"\"\xff\"")
                .unwrap_err()
                .to_string()
        );
    }

    #[test]
    fn text_and_scalars_agree_between_trees() {
        let text = r#"{"s": "v", "i": -5, "u": 18446744073709551615, "f": 50.0, "g": 2.5,
            "t": true, "n": null, "o": {"x": [1, "2"]}}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let arena = Bump::new();
        let node = Node::parse_in(text.as_bytes(), &arena).unwrap();
        let keys: Vec<&str> = value.members().map(|(k, _)| k).collect();
        assert_eq!(keys, node.members().map(|(k, _)| k).collect::<Vec<_>>());
        for k in keys {
            let (a, b) = (value.member(k).unwrap(), node.member(k).unwrap());
            assert_eq!(a.text(), b.text(), "{k}");
            assert_eq!(a.scalar(), b.scalar(), "{k}");
        }
        assert_eq!(value.member("f").unwrap().text().unwrap(), "50");
        assert_eq!(
            node.member("o").unwrap().text().unwrap(),
            r#"{"x":[1,"2"]}"#
        );
        assert_eq!(node.children().count(), 8);
    }
}
