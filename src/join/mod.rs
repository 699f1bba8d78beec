//! cluster.yaml: how a node joins its k3s cluster.
//!
//! [`load`] reads, validates and resolves the file into a [`ClusterConfig`];
//! [`ClusterConfig::node`] gives the [`NodeConfig`] of one node (top-level
//! values merged with its inventory entry); [`NodeConfig::files`] renders the
//! small set of files the builder places under `nodeimg/` on the boot medium.
//! The schema is documented in docs/cluster-yaml.md.
//!
//! Secrets: the join token (and the registries file, which may hold registry
//! passwords) are held in [`Secret`], whose `Debug`/`Display` print
//! `<redacted>`. Error messages name keys and lines, never values of secrets.

mod schema;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::k3s::K3sSpec;

/// Where the initramfs installs `nodeimg/token` on the node (mode 0600); the
/// rendered k3s config points `token-file` here.
pub const NODE_TOKEN_PATH: &str = "/etc/rancher/k3s/nodeimg-token";

/// A secret string. `Debug` and `Display` print `<redacted>`; use
/// [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a node runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `k3s agent`, joining `server`.
    Agent,
    /// `k3s server`: joins `server` if given, else a standalone server.
    Server,
    /// The first server of a new HA cluster (`k3s server --cluster-init`), no `server`.
    ClusterInit,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Server => "server",
            Role::ClusterInit => "cluster-init",
        }
    }
    /// The k3s subcommand.
    pub fn subcommand(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Server | Role::ClusterInit => "server",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which shape the join token has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenForm {
    /// `K10<sha256 of the cluster CA>::<user>:<password>`: joining nodes pin the CA.
    Secure,
    /// Anything else: the CA is not pinned.
    Short,
}

/// One `k3s_args` flag: `--name=value`, `--name value` or `--name`.
#[derive(Clone, PartialEq, Eq)]
pub struct K3sFlag {
    /// Without the leading dashes.
    pub name: String,
    pub value: Option<String>,
}

impl K3sFlag {
    /// Flags whose values are secrets, hidden in `Debug`.
    fn is_secret(&self) -> bool {
        ["token", "password", "secret"]
            .iter()
            .any(|w| self.name.contains(w))
    }
}

/// Shows flags as `--name="value"`: the value hidden entirely for secret
/// flags, and URL credentials (`scheme://user:pass@host`) hidden in any value.
impl fmt::Debug for K3sFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => write!(f, "--{}", self.name),
            Some(_) if self.is_secret() => write!(f, "--{}=<redacted>", self.name),
            Some(v) => write!(f, "--{}={:?}", self.name, hide_url_credentials(v)),
        }
    }
}

/// `text` with the user information of every URL in it replaced:
/// `postgres://user:pass@db/k3s` becomes `postgres://<redacted>@db/k3s`.
/// For display only (messages, printed configuration); the files written for
/// the node keep the real value. A URL runs from its `://` to the next
/// whitespace or quote; its user information is everything up to the last
/// `@` in it, so a password holding an unescaped `/` or `@` is hidden too
/// (at worst a path with an `@` is hidden along with it).
pub(crate) fn hide_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        match url.rfind('@') {
            Some(at) => {
                out.push_str("<redacted>");
                out.push_str(&url[at..]);
            }
            None => out.push_str(url),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// cluster.yaml, validated: every node of the inventory resolves.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The file name used in messages.
    source: String,
    /// Resolved nodes: the inventory, or one node from the top-level values.
    nodes: Vec<NodeConfig>,
    /// Whether `nodes:` was given.
    inventory: bool,
    token_form: Option<TokenForm>,
    warnings: Vec<String>,
}

/// The configuration of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Hostname and k3s node name; `None` keeps the image's hostname.
    pub name: Option<String>,
    pub role: Role,
    /// `https://host:port` of a server to join; `None` for cluster-init and standalone servers.
    pub server: Option<String>,
    token: Option<Secret>,
    pub labels: BTreeMap<String, String>,
    /// `key=value:Effect` or `key:Effect`.
    pub taints: Vec<String>,
    pub k3s_flags: Vec<K3sFlag>,
    pub ssh_authorized_keys: Vec<String>,
    pub nameservers: Vec<String>,
    pub ntp_servers: Vec<String>,
    /// The rendered registries.yaml (may hold registry credentials).
    registries: Option<Secret>,
    /// The Wi-Fi network to join (its psk a secret).
    pub wifi: Option<Wifi>,
    pub k3s: Option<K3sSpec>,
}

/// cluster.yaml's `wifi`: a WPA-PSK network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wifi {
    pub ssid: String,
    psk: Secret,
    /// ISO 3166 alpha-2 (the regulatory domain).
    pub country: Option<String>,
}

impl Wifi {
    /// wpa_supplicant's configuration for it: the SSID in hex (no quoting
    /// to get wrong), the passphrase quoted or the raw key as is.
    pub fn render_wpa_supplicant(&self) -> String {
        let mut out = String::from("# Written by nodeimg from cluster.yaml (wifi).\nctrl_interface=DIR=/run/wpa_supplicant\n");
        if let Some(c) = &self.country {
            out.push_str(&format!("country={c}\n"));
        }
        let psk = self.psk.expose();
        let psk = if psk.len() == 64 && psk.bytes().all(|b| b.is_ascii_hexdigit()) {
            psk.to_string()
        } else {
            format!("\"{psk}\"")
        };
        out.push_str(&format!(
            "network={{\n\tssid={}\n\tpsk={psk}\n\tkey_mgmt=WPA-PSK\n}}\n",
            hex::encode(self.ssid.as_bytes())
        ));
        out
    }
}

/// A file for the boot medium's `nodeimg/` directory.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeFile {
    /// Permission bits wherever the file is installed (0o600 for secrets).
    pub mode: u32,
    pub data: Vec<u8>,
}

impl fmt::Debug for NodeFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeFile({:o}, {} bytes)", self.mode, self.data.len())
    }
}

/// Reads and validates a cluster.yaml. Errors are one line:
/// `cluster.yaml:7: unknown key "lables" (did you mean "labels"?)`.
/// `token_file`, `k3s.path` and `k3s.airgap_images` are relative to the
/// file's directory.
pub fn load(path: &Path) -> Result<ClusterConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading cluster config {}", path.display()))?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    load_str(&text, &path.display().to_string(), &base)
}

/// [`load`] for text already read; `name` is used in messages.
pub fn load_str(text: &str, name: &str, base_dir: &Path) -> Result<ClusterConfig> {
    schema::parse(text, name, base_dir)
}

impl ClusterConfig {
    /// Advice that does not stop a build (short token, no node name, ...).
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// The inventory's node names, or the top-level node name if set.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().filter_map(|n| n.name.clone()).collect()
    }

    /// Whether the token pins the cluster CA (`None` without a token).
    pub fn token_form(&self) -> Option<TokenForm> {
        self.token_form
    }

    /// The configuration of one node. With an inventory, `name` picks the
    /// node (it may be left out when there is only one). Without one, `name`
    /// names the node built from the top-level values (a file without
    /// `node_name` can serve many nodes this way).
    pub fn node(&self, name: Option<&str>) -> Result<NodeConfig> {
        let names = || self.node_names().join(", ");
        if self.inventory {
            return match name {
                Some(n) => self
                    .nodes
                    .iter()
                    .find(|c| c.name.as_deref() == Some(n))
                    .cloned()
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: no node \"{n}\" in the inventory (nodes: {})",
                            self.source,
                            names()
                        )
                    }),
                None if self.nodes.len() == 1 => Ok(self.nodes[0].clone()),
                None => Err(anyhow!(
                    "{}: the inventory has {} nodes; choose one of: {}",
                    self.source,
                    self.nodes.len(),
                    names()
                )),
            };
        }
        let mut node = self
            .nodes
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("{}: no node", self.source))?;
        if let Some(n) = name {
            match &node.name {
                Some(own) if own != n => {
                    return Err(anyhow!(
                        "{}: the file names its node \"{own}\", not \"{n}\"",
                        self.source
                    ))
                }
                _ => {
                    schema::check_node_name(n).map_err(|e| anyhow!("node name \"{n}\": {e}"))?;
                    node.name = Some(n.to_owned());
                }
            }
        }
        Ok(node)
    }
}

impl fmt::Display for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.source)?;
        for n in &self.nodes {
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

impl fmt::Display for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "node {} ({}){}",
            self.name.as_deref().unwrap_or("<image hostname>"),
            self.role,
            match &self.server {
                Some(s) => format!(" joining {}", hide_url_credentials(s)),
                None => String::new(),
            }
        )?;
        writeln!(
            f,
            "  token: {}",
            if self.token.is_some() { "set" } else { "none" }
        )?;
        for (k, v) in &self.labels {
            writeln!(f, "  label {k}={v}")?;
        }
        for t in &self.taints {
            writeln!(f, "  taint {t}")?;
        }
        for a in &self.k3s_flags {
            writeln!(f, "  k3s arg {a:?}")?;
        }
        Ok(())
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yq(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// A shell single-quoted word: `'` becomes `'\''`.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl NodeConfig {
    /// The join token, if any.
    pub fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    /// Content of the token file (token plus newline), if there is a token.
    pub fn token_file_content(&self) -> Option<Secret> {
        self.token.as_ref().map(|t| Secret(format!("{}\n", t.0)))
    }

    /// k3s's `/etc/rancher/k3s/config.yaml`. Our own settings come first
    /// (server, token-file, node-name, node-label, node-taint, cluster-init);
    /// then every `k3s_args` flag becomes a key (`--flag=value` -> `flag:
    /// value`, a bare `--flag` -> `flag: true`, a repeated flag -> a list),
    /// which k3s turns back into the same command line arguments. The
    /// command line then needs only the subcommand ([`Role::subcommand`]).
    pub fn render_k3s_config(&self, token_file_path: &str) -> String {
        let mut out = String::from("# Written by nodeimg from cluster.yaml.\n");
        if let Some(s) = &self.server {
            out += &format!("server: {}\n", yq(s));
        }
        if self.token.is_some() {
            out += &format!("token-file: {}\n", yq(token_file_path));
        }
        if let Some(n) = &self.name {
            out += &format!("node-name: {}\n", yq(n));
        }
        if !self.labels.is_empty() {
            out += "node-label:\n";
            for (k, v) in &self.labels {
                out += &format!("  - {}\n", yq(&format!("{k}={v}")));
            }
        }
        if !self.taints.is_empty() {
            out += "node-taint:\n";
            for t in &self.taints {
                out += &format!("  - {}\n", yq(t));
            }
        }
        if self.role == Role::ClusterInit {
            out += "cluster-init: true\n";
        }
        // Group repeated flags, in order of first appearance.
        let mut order: Vec<&str> = Vec::new();
        let mut values: BTreeMap<&str, Vec<Option<&str>>> = BTreeMap::new();
        for fl in &self.k3s_flags {
            if !values.contains_key(fl.name.as_str()) {
                order.push(&fl.name);
            }
            values
                .entry(&fl.name)
                .or_default()
                .push(fl.value.as_deref());
        }
        for name in order {
            let vals = &values[name];
            if vals.iter().all(|v| v.is_none()) {
                out += &format!("{name}: true\n");
            } else if vals.len() == 1 {
                out += &format!("{name}: {}\n", yq(vals[0].unwrap_or("")));
            } else {
                out += &format!("{name}:\n");
                for v in vals {
                    out += &format!("  - {}\n", yq(v.unwrap_or("")));
                }
            }
        }
        out
    }

    /// k3s's `/etc/rancher/k3s/registries.yaml`, if `registries` was given.
    pub fn render_registries(&self) -> Option<String> {
        self.registries.as_ref().map(|r| r.0.clone())
    }

    /// `nodeimg/node.env`: `KEY='value'` lines a shell can source or a
    /// line reader can split at the first `=`. Values never contain
    /// newlines (cluster.yaml rejects control characters); `'` is written
    /// as `'\''`. Lists are space-separated. No secrets.
    pub fn to_node_env(&self) -> String {
        let mut v: Vec<(&str, String)> = vec![
            ("NODEIMG_CONFIG_VERSION", "1".into()),
            ("NODEIMG_HOSTNAME", self.name.clone().unwrap_or_default()),
            ("NODEIMG_ROLE", self.role.as_str().into()),
            ("NODEIMG_K3S_COMMAND", self.role.subcommand().into()),
            ("NODEIMG_SERVER", self.server.clone().unwrap_or_default()),
            ("NODEIMG_NAMESERVERS", self.nameservers.join(" ")),
            ("NODEIMG_NTP_SERVERS", self.ntp_servers.join(" ")),
        ];
        if let Some(ver) = self.k3s.as_ref().and_then(|k| k.version.clone()) {
            v.push(("NODEIMG_K3S_VERSION", ver));
        }
        let mut out = String::from("# Written by nodeimg from cluster.yaml.\n");
        for (k, val) in v {
            out += &format!("{k}={}\n", sq(&val));
        }
        out
    }

    /// The files for the boot medium, keyed by path relative to its root:
    /// `nodeimg/node.env` (0644), `nodeimg/k3s-config.yaml` (0600; its
    /// token-file is [`NODE_TOKEN_PATH`]), and when configured
    /// `nodeimg/token` (0600), `nodeimg/registries.yaml` (0600),
    /// `nodeimg/authorized_keys` (0600, for root).
    pub fn files(&self) -> BTreeMap<String, NodeFile> {
        let mut m = BTreeMap::new();
        let mut put = |name: &str, mode: u32, data: String| {
            m.insert(
                format!("nodeimg/{name}"),
                NodeFile {
                    mode,
                    data: data.into_bytes(),
                },
            );
        };
        put("node.env", 0o644, self.to_node_env());
        put(
            "k3s-config.yaml",
            0o600,
            self.render_k3s_config(NODE_TOKEN_PATH),
        );
        if let Some(t) = self.token_file_content() {
            put("token", 0o600, t.0);
        }
        if let Some(r) = self.render_registries() {
            put("registries.yaml", 0o600, r);
        }
        if let Some(w) = &self.wifi {
            put("wifi.conf", 0o600, w.render_wpa_supplicant());
        }
        if !self.ssh_authorized_keys.is_empty() {
            let mut keys = self.ssh_authorized_keys.join("\n");
            keys.push('\n');
            put("authorized_keys", 0o600, keys);
        }
        m
    }
}

#[cfg(test)]
mod tests;
