//! The cluster.yaml schema: keys, validation, inheritance, k3os aliases.
//! Every error is `file:line: message` and never quotes a secret.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::Path;

use anyhow::{anyhow, Result};

use super::yaml::{self, Node, Value};
use super::{ClusterConfig, K3sFlag, NodeConfig, Role, Secret, TokenForm, Wifi};
use crate::k3s::{self, K3sSource, K3sSpec};

/// Top-level keys. `server_url`, `hostname` and `dns_nameservers` are k3os
/// spellings (see [`canonical`]).
const TOP_KEYS: &[&str] = &[
    "server",
    "server_url",
    "token",
    "token_file",
    "role",
    "node_name",
    "hostname",
    "labels",
    "taints",
    "k3s_args",
    "ssh_authorized_keys",
    "nameservers",
    "ntp_servers",
    "registries",
    "wifi",
    "k3s",
    "nodes",
    "k3os",
];
/// Keys accepted inside a `k3os:` mapping (k3os's config.yaml shape).
const K3OS_KEYS: &[&str] = &[
    "server_url",
    "token",
    "labels",
    "taints",
    "k3s_args",
    "ssh_authorized_keys",
    "hostname",
    "dns_nameservers",
    "ntp_servers",
];
/// k3os keys with no nodeimg meaning: named as such rather than as typos.
const K3OS_UNSUPPORTED: &[&str] = &[
    "data_sources",
    "modules",
    "sysctls",
    "wifi",
    "password",
    "environment",
    "install",
    "upgrade",
    "write_files",
    "run_cmd",
    "boot_cmd",
    "init_cmd",
];
const NODE_KEYS: &[&str] = &["name", "labels", "taints", "role", "k3s_args"];
const K3S_KEYS: &[&str] = &["version", "source", "path", "url_base", "airgap_images"];
const REGISTRIES_KEYS: &[&str] = &["mirrors", "configs"];
const WIFI_KEYS: &[&str] = &["ssid", "psk", "psk_file", "country"];

/// The one name of a setting that has several spellings.
fn canonical(key: &str) -> &str {
    match key {
        "server_url" => "server",
        "hostname" => "node_name",
        "dns_nameservers" => "nameservers",
        k => k,
    }
}

struct Ctx<'a> {
    file: &'a str,
    base: &'a Path,
}

impl Ctx<'_> {
    /// `file:line: msg`, with any URL credentials in `msg` hidden (messages
    /// may quote a value: a label, a taint, an ntp server).
    fn err(&self, line: u64, msg: impl Display) -> anyhow::Error {
        anyhow!(
            "{}:{}: {}",
            self.file,
            line,
            super::hide_url_credentials(&msg.to_string())
        )
    }
}

/// A setting as written: the key's spelling and line, and its value.
struct Setting<'a> {
    key: String,
    line: u64,
    node: &'a Node,
}

/// Values one level (the top level or one inventory node) contributes.
#[derive(Default)]
struct Level {
    role: Option<(Role, u64)>,
    labels: BTreeMap<String, String>,
    taints: Vec<String>,
    /// Each flag with the line it is written on.
    flags: Vec<(u64, K3sFlag)>,
}

struct InventoryNode {
    name: String,
    line: u64,
    level: Level,
}

pub(super) fn parse(source: &str, file: &str, base: &Path) -> Result<ClusterConfig> {
    let ctx = Ctx { file, base };
    let doc = yaml::parse(source).map_err(|(line, msg)| {
        ctx.err(
            line.max(1),
            format!("invalid YAML: {}", redact(&msg, source)),
        )
    })?;
    let top = match &doc.value {
        Value::Map(m) => m,
        Value::Null => return Err(ctx.err(1, "the file is empty")),
        other => {
            return Err(ctx.err(
                doc.line.max(1),
                format!("expected a mapping of settings, found {}", other.kind()),
            ))
        }
    };

    // Gather settings from the top level and the k3os section, one per name.
    let mut settings: BTreeMap<&str, Setting> = BTreeMap::new();
    let mut add = |ctx: &Ctx, key: &str, shown: String, line: u64, node| -> Result<()> {
        let name = canonical(key);
        let name = TOP_KEYS
            .iter()
            .find(|k| **k == name)
            .copied()
            .ok_or_else(|| ctx.err(line, format!("unknown key \"{shown}\"")))?;
        if let Some(prev) = settings.get(name) {
            return Err(ctx.err(
                line,
                format!(
                    "\"{shown}\" repeats \"{}\" from line {}; keep one",
                    prev.key, prev.line
                ),
            ));
        }
        settings.insert(
            name,
            Setting {
                key: shown,
                line,
                node,
            },
        );
        Ok(())
    };
    for (k, v) in top {
        let key = key_str(&ctx, k)?;
        check_key(&ctx, key, k.line, TOP_KEYS, None)?;
        if key == "k3os" {
            let section = as_map(&ctx, v, "k3os")?;
            for (k2, v2) in section {
                let key2 = key_str(&ctx, k2)?;
                check_key(&ctx, key2, k2.line, K3OS_KEYS, Some("k3os"))?;
                add(&ctx, key2, format!("k3os.{key2}"), k2.line, v2)?;
            }
        } else {
            add(&ctx, key, key.to_owned(), k.line, v)?;
        }
    }
    let get = |name: &str| settings.get(name);

    // server
    let server = match get("server") {
        Some(s) => Some((parse_server(&ctx, s)?, s.line)),
        None => None,
    };

    // token / token_file
    let token = match (get("token"), get("token_file")) {
        (Some(t), Some(f)) => {
            let (first, second) = if t.line < f.line { (t, f) } else { (f, t) };
            return Err(ctx.err(
                second.line,
                format!(
                    "both \"{}\" (line {}) and \"{}\" are given; keep one",
                    first.key, first.line, second.key
                ),
            ));
        }
        (Some(t), None) => {
            let value = secret_text(&ctx, t)?;
            let form = check_token(&value).map_err(|m| ctx.err(t.line, m))?;
            Some((Secret(value), form, t.line))
        }
        (None, Some(f)) => {
            let rel = text(&ctx, f.node, &f.key)?;
            let path = ctx.base.join(&rel);
            let content = std::fs::read_to_string(&path)
                .map_err(|e| ctx.err(f.line, format!("reading token_file \"{rel}\": {e}")))?;
            let value = content.trim().to_owned();
            let form = check_token(&value)
                .map_err(|m| ctx.err(f.line, format!("token_file \"{rel}\": {m}")))?;
            Some((Secret(value), form, f.line))
        }
        (None, None) => None,
    };

    // node name (top level)
    let node_name = match get("node_name") {
        Some(s) => {
            let n = text(&ctx, s.node, &s.key)?;
            check_node_name(&n).map_err(|m| ctx.err(s.line, format!("{} \"{n}\": {m}", s.key)))?;
            Some(n)
        }
        None => None,
    };

    let top_level = level(
        &ctx,
        get("role"),
        get("labels"),
        get("taints"),
        get("k3s_args"),
    )?;

    let ssh_authorized_keys = match get("ssh_authorized_keys") {
        Some(s) => {
            let items = list(&ctx, s)?;
            for (i, (line, key)) in items.iter().enumerate() {
                check_ssh_key(key)
                    .map_err(|m| ctx.err(*line, format!("{} item {}: {m}", s.key, i + 1)))?;
            }
            items
                .into_iter()
                .map(|(_, k)| k.trim().to_owned())
                .collect()
        }
        None => Vec::new(),
    };
    let nameservers = match get("nameservers") {
        Some(s) => {
            let items = list(&ctx, s)?;
            for (line, ns) in &items {
                if ns.parse::<std::net::IpAddr>().is_err() {
                    return Err(ctx.err(*line, format!("{}: \"{ns}\" is not an IP address", s.key)));
                }
            }
            items.into_iter().map(|(_, v)| v).collect()
        }
        None => Vec::new(),
    };
    let ntp_servers = match get("ntp_servers") {
        Some(s) => {
            let items = list(&ctx, s)?;
            for (line, host) in &items {
                let ok = !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
                if !ok {
                    return Err(ctx.err(
                        *line,
                        format!("{}: \"{host}\" is not a host name or address", s.key),
                    ));
                }
            }
            items.into_iter().map(|(_, v)| v).collect()
        }
        None => Vec::new(),
    };
    let registries = match get("registries") {
        Some(s) => Some(Secret(parse_registries(&ctx, s)?)),
        None => None,
    };
    let wifi = match get("wifi") {
        Some(s) => Some(parse_wifi(&ctx, s)?),
        None => None,
    };
    let k3s = match get("k3s") {
        Some(s) => Some(parse_k3s(&ctx, s)?),
        None => None,
    };

    // The inventory.
    let inventory = match get("nodes") {
        Some(s) => {
            if let Some(n) = get("node_name") {
                return Err(ctx.err(
                    n.line,
                    format!(
                        "\"{}\" cannot be combined with \"nodes\" (line {}): each node has its own name",
                        n.key, s.line
                    ),
                ));
            }
            Some(parse_inventory(&ctx, s)?)
        }
        None => None,
    };

    if let (Some((_, line)), None) = (&server, &token) {
        return Err(ctx.err(
            *line,
            "\"server\" is set but there is no \"token\" or \"token_file\"",
        ));
    }

    let base = NodeConfig {
        name: node_name.clone(),
        role: Role::Agent,
        server: server.as_ref().map(|(s, _)| s.clone()),
        token: token.as_ref().map(|(t, _, _)| t.clone()),
        labels: BTreeMap::new(),
        taints: Vec::new(),
        k3s_flags: Vec::new(),
        ssh_authorized_keys,
        nameservers,
        ntp_servers,
        registries,
        wifi,
        k3s,
    };

    let mut nodes = Vec::new();
    match &inventory {
        None => {
            let role = match (top_level.role, &server) {
                (Some((Role::ClusterInit, rl)), Some((_, sl))) => {
                    return Err(ctx.err(
                        *sl,
                        format!(
                            "role cluster-init (line {rl}) starts a new cluster and takes no \"server\""
                        ),
                    ))
                }
                (Some((Role::Agent, rl)), None) => {
                    return Err(ctx.err(rl, "role agent needs \"server\" (and a token)"))
                }
                (Some((r, _)), _) => r,
                (None, Some(_)) => Role::Agent,
                (None, None) => {
                    return Err(ctx.err(
                        1,
                        "no \"server\" to join: set server and token, or role: cluster-init for a cluster's first server",
                    ))
                }
            };
            let mut n = base.clone();
            n.role = role;
            n.labels = top_level.labels.clone();
            n.taints = top_level.taints.clone();
            check_flag_mix(&top_level.flags).map_err(|(line, m)| ctx.err(line, m))?;
            n.k3s_flags = top_level.flags.iter().map(|(_, f)| f.clone()).collect();
            nodes.push(n);
        }
        Some(inv) => {
            let mut first_init: Option<&str> = None;
            for entry in inv {
                let role = entry.level.role.or(top_level.role).map(|(r, _)| r);
                let role = match (role, &server) {
                    (Some(r @ (Role::ClusterInit | Role::Server)), _) => r,
                    (Some(Role::Agent), None) => {
                        return Err(ctx.err(
                            entry.line,
                            format!(
                                "node \"{}\" has role agent but no \"server\" is given",
                                entry.name
                            ),
                        ))
                    }
                    (Some(Role::Agent), Some(_)) | (None, Some(_)) => Role::Agent,
                    (None, None) => {
                        return Err(ctx.err(
                            entry.line,
                            format!(
                                "node \"{}\" has no role and there is no \"server\" to join",
                                entry.name
                            ),
                        ))
                    }
                };
                if role == Role::ClusterInit {
                    if let Some(first) = first_init {
                        return Err(ctx.err(
                            entry.line,
                            format!(
                                "node \"{}\" is a second cluster-init node (the first is \"{first}\"); a cluster has one",
                                entry.name
                            ),
                        ));
                    }
                    first_init = Some(&entry.name);
                }
                let mut n = base.clone();
                n.name = Some(entry.name.clone());
                n.role = role;
                if role == Role::ClusterInit {
                    // The first server starts the cluster the others join.
                    n.server = None;
                }
                n.labels = top_level.labels.clone();
                n.labels.extend(entry.level.labels.clone());
                n.taints = top_level.taints.clone();
                n.taints.extend(entry.level.taints.iter().cloned());
                let mut flags = top_level.flags.clone();
                flags.extend(entry.level.flags.iter().cloned());
                check_flag_mix(&flags)
                    .map_err(|(line, m)| ctx.err(line, format!("node \"{}\": {m}", entry.name)))?;
                n.k3s_flags = flags.into_iter().map(|(_, f)| f).collect();
                nodes.push(n);
            }
        }
    }

    // Warnings.
    let mut warnings = Vec::new();
    let joins = nodes.iter().any(|n| n.server.is_some());
    if let Some((_, TokenForm::Short, line)) = &token {
        if joins {
            warnings.push(format!(
                "{file}:{line}: the token is in k3s's short form, so joining nodes do not verify the \
                 server's CA; use the full K10... token from /var/lib/rancher/k3s/server/token to pin it"
            ));
        }
    }
    if token.is_none() {
        warnings.push(format!(
            "{file}: no token: k3s generates one on the first server; other nodes will need it \
             (/var/lib/rancher/k3s/server/token)"
        ));
    }
    if inventory.is_none() && node_name.is_none() {
        warnings.push(format!(
            "{file}: no node_name: the node keeps the image's hostname unless a name is given \
             when building; k3s needs a unique name per node"
        ));
    }

    Ok(ClusterConfig {
        source: file.to_owned(),
        nodes,
        inventory: inventory.is_some(),
        token_form: token.map(|(_, f, _)| f),
        warnings,
    })
}

/// Replaces anything that may be a token in a parser message.
fn redact(msg: &str, text: &str) -> String {
    let mut out = msg.to_owned();
    let mut candidates: Vec<&str> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start().trim_start_matches("- ");
        if let Some((k, v)) = t.split_once(':') {
            let k = k.trim().trim_matches(|c| c == '"' || c == '\'');
            if k.contains("token") || k.contains("password") || k.contains("auth") {
                let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                if v.len() >= 4 {
                    candidates.push(v);
                }
            }
        }
        candidates.extend(line.split_whitespace().filter(|w| w.contains("K10")));
    }
    for c in candidates {
        out = out.replace(c, "<redacted>");
    }
    out
}

fn key_str<'a>(ctx: &Ctx, k: &'a Node) -> Result<&'a str> {
    match &k.value {
        Value::Str(s) => Ok(s),
        other => Err(ctx.err(
            k.line,
            format!("keys must be strings, found {}", other.kind()),
        )),
    }
}

/// Errors on a key not in `allowed`, naming the nearest allowed key.
fn check_key(
    ctx: &Ctx,
    key: &str,
    line: u64,
    allowed: &[&str],
    section: Option<&str>,
) -> Result<()> {
    if allowed.contains(&key) {
        return Ok(());
    }
    let within = section.map(|s| format!(" in {s}")).unwrap_or_default();
    if !is_plain_key(key) {
        // Could be anything, even a pasted secret: do not quote it.
        return Err(ctx.err(
            line,
            format!("unknown key{within} (not shown: it is not a plain name)"),
        ));
    }
    if (section.is_none() || section == Some("k3os")) && K3OS_UNSUPPORTED.contains(&key) {
        return Err(ctx.err(
            line,
            format!("k3os key \"{key}\"{within} is not supported by nodeimg"),
        ));
    }
    Err(ctx.err(
        line,
        format!("unknown key \"{key}\"{within}{}", suggestion(key, allowed)),
    ))
}

/// Short names of letters, digits, `_`, `-` and `.`: safe to quote.
pub(super) fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 40
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// ` (did you mean "x"?)` or ` (valid keys: ...)`.
fn suggestion(key: &str, allowed: &[&str]) -> String {
    let normalized = key.to_ascii_lowercase().replace('-', "_");
    // Another spelling of the same setting (server for server_url, ...).
    if let Some(a) = allowed
        .iter()
        .find(|a| canonical(a) == canonical(&normalized) || canonical(a) == normalized)
    {
        return format!(" (did you mean \"{a}\"?)");
    }
    let best = allowed
        .iter()
        .map(|a| (strsim::osa_distance(&normalized, a), *a))
        .min();
    match best {
        Some((d, a)) if d <= 2.max(key.chars().count() / 3) => format!(" (did you mean \"{a}\"?)"),
        _ => format!(" (valid keys: {})", allowed.join(", ")),
    }
}

fn as_map<'a>(ctx: &Ctx, n: &'a Node, what: &str) -> Result<&'a [(Node, Node)]> {
    match &n.value {
        Value::Map(m) => Ok(m),
        other => Err(ctx.err(
            n.line,
            format!("\"{what}\" must be a mapping, found {}", other.kind()),
        )),
    }
}

/// A scalar as text, with no control characters.
fn text(ctx: &Ctx, n: &Node, what: &str) -> Result<String> {
    let s = match &n.value {
        Value::Str(s) => s.clone(),
        Value::Number(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        other => {
            return Err(ctx.err(
                n.line,
                format!("\"{what}\" must be a string, found {}", other.kind()),
            ))
        }
    };
    if s.chars().any(char::is_control) {
        return Err(ctx.err(
            n.line,
            format!("\"{what}\" contains a control character (newline, tab, ...)"),
        ));
    }
    Ok(s)
}

/// The token's text: a string (numbers too, as written).
fn secret_text(ctx: &Ctx, s: &Setting) -> Result<String> {
    match &s.node.value {
        Value::Str(v) | Value::Number(v) => Ok(v.clone()),
        other => Err(ctx.err(
            s.line,
            format!("\"{}\" must be a string, found {}", s.key, other.kind()),
        )),
    }
}

/// A list of scalars, each with its line.
fn list(ctx: &Ctx, s: &Setting) -> Result<Vec<(u64, String)>> {
    list_of(ctx, s.node, &s.key)
}

fn list_of(ctx: &Ctx, n: &Node, what: &str) -> Result<Vec<(u64, String)>> {
    match &n.value {
        Value::Seq(items) => items
            .iter()
            .map(|i| Ok((i.line, text(ctx, i, what)?)))
            .collect(),
        Value::Null => Ok(Vec::new()),
        other => Err(ctx.err(
            n.line,
            format!("\"{what}\" must be a list, found {}", other.kind()),
        )),
    }
}

/// Validates a server URL: `https://host:port`, optionally a trailing `/`.
fn parse_server(ctx: &Ctx, s: &Setting) -> Result<String> {
    let url = text(ctx, s.node, &s.key)?;
    let bad = |why: &str| {
        ctx.err(
            s.line,
            format!(
                "\"{}\" must be https://host:port, like https://10.0.0.1:6443 ({why})",
                s.key
            ),
        )
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("not https://"))?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains(['/', '?', '#']) {
        return Err(bad("no path allowed"));
    }
    if hostport.contains('@') {
        return Err(bad("no user or password allowed"));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("bad IPv6 address"));
        }
        (h, p.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = port.ok_or_else(|| bad("no port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return Err(bad("bad port")),
    }
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
    if !host_ok {
        return Err(bad("bad host"));
    }
    Ok(format!("https://{hostport}"))
}

/// Checks a token's shape without ever quoting it.
fn check_token(t: &str) -> std::result::Result<TokenForm, String> {
    if t.is_empty() {
        return Err("the token is empty".into());
    }
    if t.chars().any(char::is_whitespace) {
        return Err("the token contains whitespace".into());
    }
    if let Some(rest) = t.strip_prefix("K10") {
        let secure = rest.split_once("::").and_then(|(hash, cred)| {
            let (user, pass) = cred.split_once(':')?;
            (hash.len() == 64
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
                && !user.is_empty()
                && !pass.is_empty())
            .then_some(())
        });
        return match secure {
            Some(()) => Ok(TokenForm::Secure),
            None => Err(
                "the token starts like k3s's secure form but is not K10<64 hex digits>::<user>:<password>"
                    .into(),
            ),
        };
    }
    Ok(TokenForm::Short)
}

/// A Kubernetes node name, also used as the hostname: lowercase RFC 1123
/// labels separated by dots.
pub(super) fn check_node_name(n: &str) -> std::result::Result<(), String> {
    if n.is_empty() || n.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    for label in n.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(
                "must be lowercase letters, digits and '-', in dot-separated parts of at most 63 characters"
                    .into(),
            );
        }
    }
    Ok(())
}

/// A label name part: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn check_label_key(k: &str) -> std::result::Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if check_node_name(p).is_err() {
            return Err(format!(
                "label key \"{k}\": the prefix before '/' must be a DNS name"
            ));
        }
    }
    if !is_label_name(name) {
        return Err(format!(
            "label key \"{k}\" must be at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
        ));
    }
    Ok(())
}

fn check_label_value(k: &str, v: &str) -> std::result::Result<(), String> {
    if v.is_empty() || is_label_name(v) {
        Ok(())
    } else {
        Err(format!(
            "label \"{k}\": value \"{v}\" must be at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
        ))
    }
}

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

fn check_taint(t: &str) -> std::result::Result<(), String> {
    let Some((kv, effect)) = t.rsplit_once(':') else {
        return Err(format!("taint \"{t}\" must be key=value:Effect"));
    };
    if !TAINT_EFFECTS.contains(&effect) {
        return Err(format!(
            "taint \"{t}\": effect must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
    check_label_key(k).map_err(|m| format!("taint \"{t}\": {m}"))?;
    check_label_value(k, v).map_err(|m| format!("taint \"{t}\": {m}"))?;
    Ok(())
}

fn check_ssh_key(k: &str) -> std::result::Result<(), String> {
    let mut words = k.split_whitespace();
    let kind = words.next().unwrap_or("");
    let known = matches!(kind, "ssh-ed25519" | "ssh-rsa")
        || kind.starts_with("ecdsa-sha2-")
        || kind.starts_with("sk-");
    if !known {
        let shown: String = kind.chars().take(40).collect();
        return Err(format!(
            "must start with ssh-ed25519, ssh-rsa, ecdsa-sha2-* or sk-*, found \"{shown}\""
        ));
    }
    if words.next().is_none() {
        return Err(format!("{kind} key has no key data"));
    }
    Ok(())
}

/// Role, labels, taints and k3s_args of one level.
fn level(
    ctx: &Ctx,
    role: Option<&Setting>,
    labels: Option<&Setting>,
    taints: Option<&Setting>,
    k3s_args: Option<&Setting>,
) -> Result<Level> {
    let mut out = Level::default();
    if let Some(s) = role {
        out.role = Some((parse_role(ctx, s.node, &s.key)?, s.line));
    }
    if let Some(s) = labels {
        out.labels = parse_labels(ctx, s.node, &s.key)?;
    }
    if let Some(s) = taints {
        for (line, t) in list(ctx, s)? {
            check_taint(&t).map_err(|m| ctx.err(line, m))?;
            out.taints.push(t);
        }
    }
    if let Some(s) = k3s_args {
        let (sub, flags) = parse_k3s_args(ctx, s.node, &s.key)?;
        out.flags = flags;
        if let Some((r, line)) = sub {
            out.role = match out.role {
                None => Some((r, line)),
                Some((given, gl)) => match (given, r) {
                    (a, b) if a == b => Some((given, gl)),
                    (Role::ClusterInit, Role::Server) => Some((given, gl)),
                    (Role::Server, Role::ClusterInit) => Some((r, line)),
                    _ => {
                        return Err(ctx.err(
                            line,
                            format!(
                                "\"{}\" makes this node {} but role is {given} (line {gl})",
                                s.key,
                                match r {
                                    Role::Agent => "an agent",
                                    Role::Server => "a server",
                                    Role::ClusterInit => "cluster-init",
                                }
                            ),
                        ))
                    }
                },
            };
        }
    }
    Ok(out)
}

fn parse_role(ctx: &Ctx, n: &Node, what: &str) -> Result<Role> {
    let r = text(ctx, n, what)?;
    match r.as_str() {
        "agent" => Ok(Role::Agent),
        "server" => Ok(Role::Server),
        "cluster-init" => Ok(Role::ClusterInit),
        other => Err(ctx.err(
            n.line,
            format!("\"{what}\" must be agent, server or cluster-init, found \"{other}\""),
        )),
    }
}

/// A mapping `key: value` or a list of `"key=value"`.
fn parse_labels(ctx: &Ctx, n: &Node, what: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut put = |line: u64, k: String, v: String| -> Result<()> {
        check_label_key(&k).map_err(|m| ctx.err(line, m))?;
        check_label_value(&k, &v).map_err(|m| ctx.err(line, m))?;
        if out.insert(k.clone(), v).is_some() {
            return Err(ctx.err(line, format!("label \"{k}\" is given twice")));
        }
        Ok(())
    };
    match &n.value {
        Value::Map(m) => {
            for (k, v) in m {
                let key = text(ctx, k, what)?;
                let val = match &v.value {
                    Value::Null => String::new(),
                    _ => text(ctx, v, what)?,
                };
                put(k.line, key, val)?;
            }
        }
        Value::Seq(_) => {
            for (line, item) in list_of(ctx, n, what)? {
                let (k, v) = item
                    .split_once('=')
                    .ok_or_else(|| ctx.err(line, format!("label \"{item}\" must be key=value")))?;
                put(line, k.to_owned(), v.to_owned())?;
            }
        }
        Value::Null => {}
        other => {
            return Err(ctx.err(
                n.line,
                format!(
                    "\"{what}\" must be a mapping or a list of \"key=value\", found {}",
                    other.kind()
                ),
            ))
        }
    }
    Ok(out)
}

/// Flags that other keys of cluster.yaml set.
fn managed_flag(name: &str) -> Option<&'static str> {
    Some(match name {
        "server" => "set it with \"server\"",
        "token" => "set it with \"token\" or \"token_file\"",
        "token-file" => "set it with \"token_file\"",
        "node-name" => "set it with \"node_name\" or the inventory",
        "node-label" => "set it with \"labels\"",
        "node-taint" => "set it with \"taints\"",
        "config" => "nodeimg writes /etc/rancher/k3s/config.yaml itself",
        _ => return None,
    })
}

/// A leading subcommand or --cluster-init (as a role, with its line), and the flags.
type ParsedArgs = (Option<(Role, u64)>, Vec<(u64, K3sFlag)>);

/// `k3s_args`: an optional leading `server`/`agent` (k3os style), then
/// long flags. `--cluster-init` means role cluster-init.
fn parse_k3s_args(ctx: &Ctx, n: &Node, what: &str) -> Result<ParsedArgs> {
    let items = list_of(ctx, n, what)?;
    let mut role = None;
    let mut cluster_init: Option<u64> = None;
    let mut flags = Vec::new();
    let mut i = 0;
    if let Some((line, first)) = items.first() {
        match first.as_str() {
            "server" => {
                role = Some((Role::Server, *line));
                i = 1;
            }
            "agent" => {
                role = Some((Role::Agent, *line));
                i = 1;
            }
            _ => {}
        }
    }
    while i < items.len() {
        let (line, item) = &items[i];
        let Some(body) = item.strip_prefix("--") else {
            if item.starts_with('-') {
                let short: String = item.chars().take_while(|c| *c != '=').take(10).collect();
                return Err(ctx.err(
                    *line,
                    format!("\"{what}\": write \"{short}\" in its long form (--name)"),
                ));
            }
            return Err(ctx.err(
                *line,
                format!(
                    "\"{what}\" item {} is not a flag (flags start with \"--\")",
                    i + 1
                ),
            ));
        };
        let (name, mut value) = match body.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (body.to_owned(), None),
        };
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(ctx.err(
                *line,
                format!("\"{what}\" item {} is not a valid --flag name", i + 1),
            ));
        }
        if value.is_none() {
            if let Some((_, next)) = items.get(i + 1) {
                if !next.starts_with('-') {
                    value = Some(next.clone());
                    i += 1;
                }
            }
        }
        if let Some(why) = managed_flag(&name) {
            return Err(ctx.err(
                *line,
                format!("\"{what}\": --{name} is not allowed here: {why}"),
            ));
        }
        if name == "cluster-init" {
            match value.as_deref() {
                None | Some("true") => {
                    cluster_init = Some(*line);
                    i += 1;
                    continue;
                }
                _ => {
                    return Err(ctx.err(
                        *line,
                        format!("\"{what}\": use \"role: cluster-init\" instead of --cluster-init"),
                    ))
                }
            }
        }
        flags.push((*line, K3sFlag { name, value }));
        i += 1;
    }
    if let Some(line) = cluster_init {
        if let Some((Role::Agent, _)) = role {
            return Err(ctx.err(
                line,
                format!("\"{what}\": an agent cannot use --cluster-init"),
            ));
        }
        role = Some((Role::ClusterInit, line));
    }
    Ok((role, flags))
}

/// A flag given both bare and with a value cannot be rendered into k3s's
/// config. The error is on the line of the later of the two (where the
/// conflict appears), naming the other's line when it differs.
fn check_flag_mix(flags: &[(u64, K3sFlag)]) -> std::result::Result<(), (u64, String)> {
    for (i, (line, f)) in flags.iter().enumerate() {
        let clash = flags[..i]
            .iter()
            .find(|(_, g)| g.name == f.name && (g.value.is_none() != f.value.is_none()));
        if let Some((first, _)) = clash {
            let other = if first == line {
                String::new()
            } else {
                format!(" (the other at line {first})")
            };
            return Err((
                *line,
                format!(
                    "k3s_args: --{} is given both with and without a value{other}",
                    f.name
                ),
            ));
        }
    }
    Ok(())
}

fn parse_inventory(ctx: &Ctx, s: &Setting) -> Result<Vec<InventoryNode>> {
    let items = match &s.node.value {
        Value::Seq(items) if !items.is_empty() => items,
        Value::Seq(_) | Value::Null => {
            return Err(ctx.err(s.line, "\"nodes\" is empty: list at least one node"))
        }
        other => {
            return Err(ctx.err(
                s.line,
                format!("\"nodes\" must be a list of nodes, found {}", other.kind()),
            ))
        }
    };
    let mut out: Vec<InventoryNode> = Vec::new();
    for item in items {
        let map = match &item.value {
            Value::Map(m) => m,
            other => {
                return Err(ctx.err(
                    item.line,
                    format!(
                        "each entry of \"nodes\" must be a mapping, found {}",
                        other.kind()
                    ),
                ))
            }
        };
        let mut fields: BTreeMap<&str, Setting> = BTreeMap::new();
        for (k, v) in map {
            let key = key_str(ctx, k)?;
            check_key(ctx, key, k.line, NODE_KEYS, Some("nodes"))?;
            fields.insert(
                NODE_KEYS
                    .iter()
                    .find(|n| **n == key)
                    .copied()
                    .unwrap_or("name"),
                Setting {
                    key: key.to_owned(),
                    line: k.line,
                    node: v,
                },
            );
        }
        let name_setting = fields
            .get("name")
            .ok_or_else(|| ctx.err(item.line, "a node in \"nodes\" has no \"name\""))?;
        let name = text(ctx, name_setting.node, "name")?;
        check_node_name(&name)
            .map_err(|m| ctx.err(name_setting.line, format!("node name \"{name}\": {m}")))?;
        if let Some(prev) = out.iter().find(|p| p.name == name) {
            return Err(ctx.err(
                name_setting.line,
                format!(
                    "node \"{name}\" is listed twice (first at line {})",
                    prev.line
                ),
            ));
        }
        let level = level(
            ctx,
            fields.get("role"),
            fields.get("labels"),
            fields.get("taints"),
            fields.get("k3s_args"),
        )?;
        out.push(InventoryNode {
            name,
            line: item.line,
            level,
        });
    }
    Ok(out)
}

fn parse_k3s(ctx: &Ctx, s: &Setting) -> Result<K3sSpec> {
    let map = as_map(ctx, s.node, "k3s")?;
    let mut f: BTreeMap<&str, (u64, &Node)> = BTreeMap::new();
    for (k, v) in map {
        let key = key_str(ctx, k)?;
        check_key(ctx, key, k.line, K3S_KEYS, Some("k3s"))?;
        let known = K3S_KEYS
            .iter()
            .find(|n| **n == key)
            .copied()
            .unwrap_or("version");
        f.insert(known, (k.line, v));
    }
    let get = |k: &str| -> Result<Option<(u64, String)>> {
        match f.get(k) {
            Some((line, n)) => Ok(Some((*line, text(ctx, n, &format!("k3s.{k}"))?))),
            None => Ok(None),
        }
    };
    let version = match get("version")? {
        Some((line, v)) => {
            if !k3s::is_valid_version(&v) {
                return Err(ctx.err(
                    line,
                    format!("k3s version \"{v}\" is not like v1.31.4+k3s1"),
                ));
            }
            Some(v)
        }
        None => None,
    };
    let source = get("source")?;
    let path = get("path")?;
    let url_base = get("url_base")?;
    let source = match source.as_ref().map(|(l, v)| (*l, v.as_str())) {
        None | Some((_, "release")) => {
            if let Some((line, _)) = path {
                return Err(ctx.err(line, "k3s.path goes with source: file"));
            }
            if version.is_none() {
                return Err(ctx.err(s.line, "k3s: \"version\" is needed to download a release"));
            }
            let url_base = match url_base {
                Some((line, u)) => {
                    if !(u.starts_with("https://") || u.starts_with("http://"))
                        || u.contains(char::is_whitespace)
                    {
                        return Err(
                            ctx.err(line, "k3s.url_base must be an http:// or https:// URL")
                        );
                    }
                    u.trim_end_matches('/').to_owned()
                }
                None => k3s::DEFAULT_URL_BASE.to_owned(),
            };
            K3sSource::Release { url_base }
        }
        Some((_, "file")) => {
            if let Some((line, _)) = url_base {
                return Err(ctx.err(line, "k3s.url_base goes with source: release"));
            }
            let (_, p) = path.ok_or_else(|| ctx.err(s.line, "k3s: source: file needs \"path\""))?;
            K3sSource::File {
                path: ctx.base.join(p),
            }
        }
        Some((line, other)) => {
            return Err(ctx.err(
                line,
                format!("k3s.source must be release or file, found \"{other}\""),
            ))
        }
    };
    let airgap_images = get("airgap_images")?.map(|(_, p)| ctx.base.join(p));
    Ok(K3sSpec {
        version,
        source,
        airgap_images,
    })
}

/// `registries`: k3s's registries.yaml content (mirrors, configs), rendered
/// back as YAML.
/// `wifi: {ssid, psk | psk_file, country}`: the network every node joins.
/// The psk is a secret: errors name its line, never its text.
fn parse_wifi(ctx: &Ctx, s: &Setting) -> Result<Wifi> {
    let map = as_map(ctx, s.node, "wifi")?;
    let mut ssid = None;
    let mut psk: Option<(Secret, u64)> = None;
    let mut country = None;
    for (k, v) in map {
        let key = key_str(ctx, k)?;
        check_key(ctx, key, k.line, WIFI_KEYS, Some("wifi"))?;
        match key {
            "ssid" => {
                let t = text(ctx, v, "wifi.ssid")?;
                if t.is_empty() || t.len() > 32 {
                    return Err(ctx.err(k.line, "wifi.ssid must be 1 to 32 bytes"));
                }
                ssid = Some(t);
            }
            "psk" | "psk_file" => {
                if let Some((_, first)) = &psk {
                    return Err(ctx.err(
                        k.line,
                        format!("wifi has both \"psk\" and \"psk_file\" (line {first}); keep one"),
                    ));
                }
                let value = if key == "psk" {
                    match &v.value {
                        Value::Str(x) | Value::Number(x) => x.clone(),
                        other => {
                            return Err(ctx.err(
                                k.line,
                                format!("\"wifi.psk\" must be a string, found {}", other.kind()),
                            ))
                        }
                    }
                } else {
                    let rel = text(ctx, v, "wifi.psk_file")?;
                    let content = std::fs::read_to_string(ctx.base.join(&rel)).map_err(|e| {
                        ctx.err(k.line, format!("reading wifi.psk_file \"{rel}\": {e}"))
                    })?;
                    content.trim_end_matches(['\n', '\r']).to_owned()
                };
                check_psk(&value).map_err(|m| ctx.err(k.line, format!("wifi.{key}: {m}")))?;
                psk = Some((Secret(value), k.line));
            }
            _ => {
                let c = text(ctx, v, "wifi.country")?;
                if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(ctx.err(
                        k.line,
                        format!("wifi.country \"{c}\" is not a two-letter ISO 3166 code such as DE or US"),
                    ));
                }
                country = Some(c);
            }
        }
    }
    let ssid = ssid.ok_or_else(|| ctx.err(s.line, "wifi needs \"ssid\""))?;
    let psk = psk
        .ok_or_else(|| {
            ctx.err(
                s.line,
                "wifi needs \"psk\" or \"psk_file\" (open networks are not supported)",
            )
        })?
        .0;
    Ok(Wifi { ssid, psk, country })
}

/// A WPA passphrase (8 to 63 printable ASCII characters) or a raw 256-bit
/// PSK (64 hex digits); never quotes it.
fn check_psk(p: &str) -> std::result::Result<(), String> {
    if p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    if !(8..=63).contains(&p.len()) {
        return Err(format!(
            "a passphrase has 8 to 63 characters (this one has {}), a raw key 64 hex digits",
            p.chars().count()
        ));
    }
    if !p.bytes().all(|b| (0x20..0x7f).contains(&b)) || p.contains('"') || p.contains('\\') {
        return Err("the passphrase must be printable ASCII without \" or \\".into());
    }
    Ok(())
}

fn parse_registries(ctx: &Ctx, s: &Setting) -> Result<String> {
    let map = as_map(ctx, s.node, "registries")?;
    for (k, _) in map {
        let key = key_str(ctx, k)?;
        check_key(ctx, key, k.line, REGISTRIES_KEYS, Some("registries"))?;
    }
    let mut out = String::from("# Written by nodeimg from cluster.yaml.\n");
    emit_map(&mut out, map, 0);
    Ok(out)
}

fn scalar(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.clone(),
        Value::Str(s) => super::yq(s),
        Value::Map(m) if m.is_empty() => "{}".into(),
        Value::Seq(s) if s.is_empty() => "[]".into(),
        _ => return None,
    })
}

fn emit_map(out: &mut String, map: &[(Node, Node)], indent: usize) {
    for (k, v) in map {
        let key = match &k.value {
            Value::Str(s) | Value::Number(s) => super::yq(s),
            other => scalar(other).unwrap_or_else(|| "\"\"".into()),
        };
        out.push_str(&" ".repeat(indent));
        out.push_str(&key);
        out.push(':');
        emit_value(out, &v.value, indent);
    }
}

/// After `key:` or `-`: a scalar on the same line, or a block below.
fn emit_value(out: &mut String, v: &Value, indent: usize) {
    if let Some(s) = scalar(v) {
        out.push(' ');
        out.push_str(&s);
        out.push('\n');
        return;
    }
    out.push('\n');
    match v {
        Value::Map(m) => emit_map(out, m, indent + 2),
        Value::Seq(items) => {
            for item in items {
                out.push_str(&" ".repeat(indent + 2));
                out.push('-');
                emit_value(out, &item.value, indent + 2);
            }
        }
        _ => {}
    }
}
