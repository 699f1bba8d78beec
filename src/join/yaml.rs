//! A small YAML document model with source lines, read through serde-saphyr.
//!
//! cluster.yaml is validated by hand (not with `#[derive(Deserialize)]`) so that
//! every error can name its line, unknown keys can suggest the nearest valid
//! one, and no error ever quotes a value (the token must never leak).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// One YAML node: its value and the 1-based line it starts on (0 if unknown).
#[derive(Clone, PartialEq)]
pub struct Node {
    pub line: u64,
    pub value: Value,
    /// Byte range in the source, when known (used to keep numbers as written).
    span: Option<(usize, usize)>,
}

#[derive(Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// Integers and floats, kept as written in the source.
    Number(String),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in source order (duplicates are rejected by the parser).
    Map(Vec<(Node, Node)>),
}

// Values may hold secrets (token, registry passwords): never print them.
impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node(line {}, {})", self.line, self.value.kind())
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

impl Value {
    /// What this value is, for messages ("a string", "a list", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Raw deserialization target: a value whose children carry spans.
struct Raw(Value);

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

fn node(s: Spanned<Raw>) -> Node {
    let span = s.referenced.span();
    let span = match (span.byte_offset(), span.byte_len()) {
        (Some(o), Some(l)) => usize::try_from(o).ok().zip(usize::try_from(l).ok()),
        _ => None,
    };
    Node {
        line: s.referenced.line(),
        value: s.value.0,
        span,
    }
}

/// Replaces each number's value with its source text ("1.50" stays "1.50",
/// not "1.5"), where the parser told us where it came from.
fn numbers_as_written(n: &mut Node, text: &str) {
    match &mut n.value {
        Value::Number(v) => {
            if let Some((o, l)) = n.span {
                if let Some(raw) = text.get(o..o.saturating_add(l)) {
                    let raw = raw.trim();
                    // Only plain scalars: the parser's value and the text agree on the digits.
                    if !raw.is_empty()
                        && raw
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+-._".contains(c))
                    {
                        *v = raw.to_owned();
                    }
                }
            }
        }
        Value::Seq(items) => items.iter_mut().for_each(|i| numbers_as_written(i, text)),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            numbers_as_written(k, text);
            numbers_as_written(v, text);
        }),
        _ => {}
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw(Value::Number(v.to_string())))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw(Value::Number(v.to_string())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw(Value::Number(v.to_string())))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        Ok(Raw(Value::Number(v.to_string())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw(Value::Number(v.to_string())))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw(Value::Str(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw(Value::Str(v)))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
        match std::str::from_utf8(v) {
            Ok(s) => Ok(Raw(Value::Str(s.to_owned()))),
            Err(_) => Err(E::custom("binary values are not supported")),
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(node(item));
        }
        Ok(Raw(Value::Seq(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Spanned<Raw>>()? {
            let v = map.next_value::<Spanned<Raw>>()?;
            entries.push((node(k), node(v)));
        }
        Ok(Raw(Value::Map(entries)))
    }
}

/// Parses one YAML document. The error is `(line, message)`; the message
/// never contains document text.
pub fn parse(text: &str) -> Result<Node, (u64, String)> {
    match serde_saphyr::from_str::<Spanned<Raw>>(text) {
        Ok(s) => {
            let mut n = node(s);
            numbers_as_written(&mut n, text);
            Ok(n)
        }
        Err(e) => {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            let mut msg = e.without_snippet().to_string();
            // The line is reported separately; drop the parser's own position suffix.
            if let Some(i) = msg.rfind(" at line ") {
                msg.truncate(i);
            }
            if let Some(rest) = msg.strip_prefix("duplicate mapping key: ") {
                let key = rest
                    .split(", set DuplicateKeyPolicy")
                    .next()
                    .unwrap_or(rest);
                msg = if super::schema::is_plain_key(key) {
                    format!("duplicate key \"{key}\"")
                } else {
                    "duplicate key".to_owned()
                };
            }
            Err((line, msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &Node) -> &str {
        match &n.value {
            Value::Str(s) => s,
            other => panic!("key is {}", other.kind()),
        }
    }

    /// A scalar with its kind, for messages (`Debug` hides values).
    fn shown(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Number(n) => format!("number {n}"),
            Value::Str(s) => format!("string {s}"),
            other => other.kind().into(),
        }
    }

    #[test]
    fn lines_and_values() {
        let n = parse("a: 1\nb:\n  - x\n  - 'y'\nc: {d: true}\ne: 1.50\n").unwrap();
        assert_eq!(n.line, 1);
        let Value::Map(m) = &n.value else {
            panic!("top level is {}", n.value.kind())
        };
        let keys: Vec<(&str, u64)> = m.iter().map(|(k, _)| (key(k), k.line)).collect();
        assert_eq!(
            keys,
            [("a", 1), ("b", 2), ("c", 5), ("e", 6)],
            "keys in order"
        );

        assert_eq!((shown(&m[0].1.value), m[0].1.line), ("number 1".into(), 1));

        let Value::Seq(items) = &m[1].1.value else {
            panic!("b is {}", m[1].1.value.kind())
        };
        let items: Vec<(String, u64)> = items.iter().map(|i| (shown(&i.value), i.line)).collect();
        assert_eq!(
            items,
            [("string x".into(), 3), ("string y".into(), 4)],
            "a quoted scalar is a string like a plain one"
        );

        let Value::Map(c) = &m[2].1.value else {
            panic!("c is {}", m[2].1.value.kind())
        };
        assert_eq!(c.len(), 1);
        assert_eq!((key(&c[0].0), c[0].0.line), ("d", 5));
        assert_eq!(shown(&c[0].1.value), "bool true");

        // Numbers keep their source text, not the float's shortest form.
        assert_eq!(
            (shown(&m[3].1.value), m[3].1.line),
            ("number 1.50".into(), 6)
        );
    }

    #[test]
    fn errors_name_their_line_and_not_the_text() {
        let (line, msg) = parse("a: 1\nb: [\n").unwrap_err();
        assert!(
            (2..=3).contains(&line),
            "unclosed [ opened on line 2: {line} {msg}"
        );
        assert!(!msg.is_empty() && !msg.contains(" at line "), "{msg}");

        assert_eq!(
            parse("a: 1\na: 2\n").unwrap_err(),
            (2, "duplicate key \"a\"".to_string())
        );
        // A key that is not a plain name is not quoted: it could be a pasted secret.
        let (line, msg) =
            parse("x: 1\n\"K10abc::server:pw\": 1\n\"K10abc::server:pw\": 2\n").unwrap_err();
        assert_eq!((line, msg.as_str()), (3, "duplicate key"));

        let (line, msg) = parse("a: 1\n  token: K10abc\n b").unwrap_err();
        assert!(line >= 2, "{line}");
        assert!(!msg.contains("K10abc"), "{msg}");
    }
}
