//! The part of containerd's filter syntax a List request uses: filters
//! are OR'ed, the comma-separated clauses of one are AND'ed, a clause is
//! `field==value` or `field!=value` over `name`, `parent`, `kind` and
//! `labels."key"` (values and keys optionally double-quoted). A clause
//! this parser does not understand matches everything: containerd checks
//! what it asked for again (and a wider answer is still a correct one).

use containerd_client::services::v1::snapshots::Info;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    field: Vec<String>,
    equal: bool,
    value: String,
}

/// A parsed list of filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Filter {
    /// Alternatives, each a list of clauses; empty matches all.
    any: Vec<Vec<Clause>>,
}

/// Splits `s` at `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    match s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => s.to_string(),
    }
}

fn clause(text: &str) -> Option<Clause> {
    let (field, equal, value) = if let Some((f, v)) = text.split_once("!=") {
        (f, false, v)
    } else {
        let (f, v) = text.split_once("==")?;
        (f, true, v)
    };
    let field: Vec<String> = split_unquoted(field.trim(), '.')
        .into_iter()
        .map(unquote)
        .collect();
    Some(Clause {
        field,
        equal,
        value: unquote(value),
    })
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "view",
        2 => "active",
        3 => "committed",
        _ => "unknown",
    }
}

impl Filter {
    /// Parses a request's filters.
    pub(super) fn parse(filters: &[String]) -> Filter {
        let any = filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| {
                split_unquoted(f, ',')
                    .into_iter()
                    .filter_map(clause)
                    .collect()
            })
            .collect();
        Filter { any }
    }

    /// Whether `info` passes.
    pub(super) fn matches(&self, info: &Info) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|c| c.matches(info)))
    }
}

impl Clause {
    fn matches(&self, info: &Info) -> bool {
        let actual = match self.field.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["name"] => Some(info.name.as_str()),
            ["parent"] => Some(info.parent.as_str()),
            ["kind"] => Some(kind_name(info.kind)),
            ["labels", key] => info.labels.get(key).map(String::as_str),
            _ => return true,
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, parent: &str, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind: 3,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn remote_lookup_filter_matches_label_and_parent() {
        // What containerd's metadata store sends after ALREADY_EXISTS.
        let f = Filter::parse(&[
            r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="p1""#.to_string(),
        ]);
        let hit = info(
            "sha256:abc",
            "p1",
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        let other_parent = info(
            "sha256:abc",
            "p2",
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        let no_label = info("x", "p1", &[]);
        assert!(f.matches(&hit));
        assert!(!f.matches(&other_parent));
        assert!(!f.matches(&no_label));
    }

    #[test]
    fn filters_are_ored_and_unknown_clauses_match() {
        let f = Filter::parse(&["name==a".into(), "kind==active".into()]);
        assert!(f.matches(&info("a", "", &[])));
        assert!(!f.matches(&info("b", "", &[])));
        assert!(Filter::parse(&["name~=x".into()]).matches(&info("b", "", &[])));
        assert!(Filter::parse(&["size==3".into()]).matches(&info("b", "", &[])));
        assert!(Filter::parse(&[]).matches(&info("b", "", &[])));
        assert!(Filter::parse(&["name!=a".into()]).matches(&info("b", "", &[])));
    }
}
