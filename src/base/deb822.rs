//! The deb822 control format of Debian's archive files (`Packages`, the text
//! of `InRelease`, `.sources`): paragraphs of `Field: value` lines separated
//! by blank lines, continuation lines starting with a space or tab, `#`
//! comment lines. Malformed input is an error naming the line, never a panic.
//!
//! Hand-written: it is some forty lines, and the crates that parse deb822
//! (`deb822-lossless`, `debian-control`) bring a lossless syntax tree and its
//! dependencies for what is here a read-only pass over a large index.

/// One paragraph: its fields in file order. Field names compare without
/// regard to case, as in Debian policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Paragraph {
    /// 1-based line number of the paragraph's first field.
    pub line: usize,
    fields: Vec<(String, String)>,
}

impl Paragraph {
    /// The value of field `name`: the first line with surrounding whitespace
    /// removed, then each continuation line (its leading space removed; a
    /// line of a single `.` stands for an empty line), joined by `\n`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The paragraph as deb822 text (each field through [`field_text`]).
    pub fn to_text(&self) -> String {
        self.fields().map(|(n, v)| field_text(n, v)).collect()
    }
}

/// One field as deb822 text, ending with a newline: the value's first line
/// after `Name: `, each further line as a continuation line (a leading
/// space; an empty line as ` .`). The inverse of what [`parse`] gives.
pub fn field_text(name: &str, value: &str) -> String {
    let mut out = format!("{name}:");
    let mut lines = value.split('\n');
    if let Some(first) = lines.next() {
        if !first.is_empty() {
            out.push(' ');
            out.push_str(first);
        }
    }
    for l in lines {
        out.push_str(if l.is_empty() { "\n ." } else { "\n " });
        out.push_str(l);
    }
    out.push('\n');
    out
}

/// Parses a text that holds exactly one paragraph (a package's `control`
/// file, a pam-configs profile).
pub fn parse_one(text: &str) -> Result<Paragraph, Deb822Error> {
    let mut all = parse(text)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        0 => Err(Deb822Error {
            line: 1,
            why: "no paragraph".into(),
        }),
        _ => Err(Deb822Error {
            line: all[1].line,
            why: "more than one paragraph".into(),
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct Deb822Error {
    pub line: usize,
    pub why: String,
}

/// Parses every paragraph of `text`.
pub fn parse(text: &str) -> Result<Vec<Paragraph>, Deb822Error> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |why: String| Deb822Error { line, why };
        if raw.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if raw.starts_with('#') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            let Some((_, value)) = cur.fields.last_mut() else {
                return Err(err("continuation line without a field before it".into()));
            };
            let cont = &raw[1..];
            value.push('\n');
            if cont.trim_end() != "." {
                value.push_str(cont.trim_end());
            }
            continue;
        }
        let Some((name, value)) = raw.split_once(':') else {
            return Err(err(format!(
                "expected \"Field: value\", found {:?}",
                clip(raw)
            )));
        };
        if name.is_empty()
            || name.starts_with('-')
            || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        {
            return Err(err(format!("invalid field name {:?}", clip(name))));
        }
        if cur.get(name).is_some() {
            return Err(err(format!("field {name} appears twice in one paragraph")));
        }
        if cur.fields.is_empty() {
            cur.line = line;
        }
        cur.fields
            .push((name.to_string(), value.trim().to_string()));
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// At most 60 characters of `s`, for messages about hostile input.
fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_paragraph_round_trips_as_text() {
        let p =
            parse_one("Package: a\nVersion: 1.0\nDescription: short\n more\n .\n end\n\n").unwrap();
        assert_eq!(p.get("package"), Some("a"));
        assert_eq!(p.get("Description"), Some("short\nmore\n\nend"));
        assert_eq!(
            p.to_text(),
            "Package: a\nVersion: 1.0\nDescription: short\n more\n .\n end\n"
        );
        assert_eq!(
            field_text("Conffiles", "\n/etc/a 0f"),
            "Conffiles:\n /etc/a 0f\n"
        );
    }

    #[test]
    fn one_paragraph_errors_say_where() {
        let e = parse_one("Package: a\nbroken line\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse_one(" cont\n").unwrap_err();
        assert!(e.to_string().contains("continuation"), "{e}");
        let e = parse_one("A: 1\n\nB: 2\n").unwrap_err();
        assert!(e.to_string().contains("more than one"), "{e}");
        let e = parse_one("A: 1\nA: 2\n").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        assert!(parse_one("\n\n").is_err());
    }

    #[test]
    fn paragraphs_fields_and_continuations() {
        let text = "# a comment\n\
Package: foo\n\
Version:  1.0-1 \n\
Description: short\n \
long line one\n \
.\n \
line three\n\
\n\
\n\
package: bar\n\
Depends: a,\n b (>= 1)\n\
# comment inside\n\
Multi-Arch: foreign\n";
        let ps = parse(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].line, 2);
        assert_eq!(ps[0].get("version"), Some("1.0-1"));
        assert_eq!(
            ps[0].get("Description"),
            Some("short\nlong line one\n\nline three")
        );
        assert_eq!(ps[1].get("Package"), Some("bar"));
        assert_eq!(ps[1].get("Depends"), Some("a,\nb (>= 1)"));
        assert_eq!(ps[1].get("multi-arch"), Some("foreign"));
        assert_eq!(ps[1].line, 10);
        assert_eq!(ps[1].fields().count(), 3);
    }

    #[test]
    fn crlf_and_whitespace_only_separators() {
        let ps = parse("A: 1\r\nB: 2\r\n \t \r\nA: 3\r\n").unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].get("B"), Some("2"));
        assert_eq!(ps[1].get("A"), Some("3"));
    }

    #[test]
    fn malformed_is_an_error_with_its_line() {
        for (text, line) in [
            (" continuation first\n", 1),
            ("A: 1\nno colon here\n", 2),
            ("A: 1\nA: 2\n", 2),
            ("A: 1\n: empty name\n", 2),
            ("A: 1\n\nB C: x\n", 3),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }

    #[test]
    fn empty_input_has_no_paragraphs() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("\n\n# only comments\n").unwrap().is_empty());
    }
}
