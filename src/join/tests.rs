use super::*;
use crate::k3s::K3sSource;

/// A well-formed secure token; its password part is what must never leak.
const PASSWORD: &str = "s3cr3t-passw0rd-do-not-print";
fn secure_token() -> String {
    format!("K10{}::server:{PASSWORD}", "ab".repeat(32))
}

fn load_in(dir: &Path, text: &str) -> Result<ClusterConfig> {
    load_str(text, "cluster.yaml", dir)
}

fn ok(text: &str) -> ClusterConfig {
    let dir = tempfile::tempdir().unwrap();
    match load_in(dir.path(), text) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e:#}"),
    }
}

fn ok_in(dir: &Path, text: &str) -> ClusterConfig {
    match load_in(dir, text) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e:#}"),
    }
}

fn err(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    match load_in(dir.path(), text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => format!("{e:#}"),
    }
}

fn agent_yaml() -> String {
    format!(
        r#"# an agent node
server: https://10.0.0.1:6443
token: "{}"
node_name: pi-1
labels:
  zone: kitchen
  topology.kubernetes.io/region: home
taints:
  - dedicated=edge:NoSchedule
  - gpu:PreferNoSchedule
k3s_args:
  - --node-ip=10.0.0.11
  - --kubelet-arg
  - max-pods=50
  - --kubelet-arg=image-gc-high-threshold=80
  - --disable-apiserver-lb
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ7 admin@laptop
nameservers: [10.0.0.1, "2001:db8::1"]
ntp_servers: [pool.ntp.org]
k3s:
  version: v1.31.4+k3s1
"#,
        secure_token()
    )
}

#[test]
fn agent_node_resolves_and_renders() {
    let c = ok(&agent_yaml());
    assert_eq!(c.warnings(), Vec::<String>::new());
    assert_eq!(c.node_names(), vec!["pi-1".to_string()]);
    assert_eq!(c.token_form(), Some(TokenForm::Secure));
    let n = c.node(None).unwrap();
    assert_eq!(n.role, Role::Agent);
    assert_eq!(n.server.as_deref(), Some("https://10.0.0.1:6443"));
    assert_eq!(
        n.token().map(|t| t.expose().to_owned()),
        Some(secure_token())
    );
    assert_eq!(
        n.k3s,
        Some(K3sSpec {
            version: Some("v1.31.4+k3s1".into()),
            source: K3sSource::Release {
                url_base: crate::k3s::DEFAULT_URL_BASE.into()
            },
            airgap_images: None,
        })
    );
    assert_eq!(
        n.render_k3s_config("/run/token"),
        r#"# Written by nodeimg from cluster.yaml.
server: "https://10.0.0.1:6443"
token-file: "/run/token"
node-name: "pi-1"
node-label:
  - "topology.kubernetes.io/region=home"
  - "zone=kitchen"
node-taint:
  - "dedicated=edge:NoSchedule"
  - "gpu:PreferNoSchedule"
node-ip: "10.0.0.11"
kubelet-arg:
  - "max-pods=50"
  - "image-gc-high-threshold=80"
disable-apiserver-lb: true
"#
    );
    assert_eq!(
        n.to_node_env(),
        "# Written by nodeimg from cluster.yaml.\n\
         NODEIMG_CONFIG_VERSION='1'\n\
         NODEIMG_HOSTNAME='pi-1'\n\
         NODEIMG_ROLE='agent'\n\
         NODEIMG_K3S_COMMAND='agent'\n\
         NODEIMG_SERVER='https://10.0.0.1:6443'\n\
         NODEIMG_NAMESERVERS='10.0.0.1 2001:db8::1'\n\
         NODEIMG_NTP_SERVERS='pool.ntp.org'\n\
         NODEIMG_K3S_VERSION='v1.31.4+k3s1'\n"
    );
    let files = n.files();
    let summary: Vec<(&str, u32)> = files.iter().map(|(k, f)| (k.as_str(), f.mode)).collect();
    assert_eq!(
        summary,
        vec![
            ("nodeimg/authorized_keys", 0o600),
            ("nodeimg/k3s-config.yaml", 0o600),
            ("nodeimg/node.env", 0o644),
            ("nodeimg/token", 0o600),
        ]
    );
    assert_eq!(
        files["nodeimg/token"].data,
        format!("{}\n", secure_token()).into_bytes()
    );
    assert_eq!(
        files["nodeimg/authorized_keys"].data,
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ7 admin@laptop\n".to_vec()
    );
    assert_eq!(
        files["nodeimg/k3s-config.yaml"].data,
        n.render_k3s_config(NODE_TOKEN_PATH).into_bytes()
    );
}

/// The rendered k3s config is YAML that means what we intended: read it back.
#[test]
fn k3s_config_reads_back_as_yaml() {
    let n = ok(&agent_yaml()).node(None).unwrap();
    let text = n.render_k3s_config("/etc/rancher/k3s/nodeimg-token");
    let doc = yaml::parse(&text).unwrap();
    let yaml::Value::Map(m) = doc.value else {
        panic!("not a mapping")
    };
    let keys: Vec<String> = m
        .iter()
        .map(|(k, _)| match &k.value {
            yaml::Value::Str(s) => s.clone(),
            _ => panic!("non-string key"),
        })
        .collect();
    assert_eq!(
        keys,
        [
            "server",
            "token-file",
            "node-name",
            "node-label",
            "node-taint",
            "node-ip",
            "kubelet-arg",
            "disable-apiserver-lb"
        ]
    );
    assert!(matches!(m[7].1.value, yaml::Value::Bool(true)));
    match &m[6].1.value {
        yaml::Value::Seq(items) => assert_eq!(items.len(), 2),
        other => panic!("kubelet-arg is {other:?}"),
    }
}

#[test]
fn first_server_with_cluster_init() {
    let c = ok("role: cluster-init\ntoken: shared-secret\nhostname: srv-1\n");
    // A short token on a cluster nobody joins from this file: no CA warning.
    assert_eq!(c.warnings(), Vec::<String>::new());
    assert_eq!(c.token_form(), Some(TokenForm::Short));
    let n = c.node(None).unwrap();
    assert_eq!(n.role, Role::ClusterInit);
    assert_eq!(n.server, None);
    assert_eq!(
        n.render_k3s_config(NODE_TOKEN_PATH),
        "# Written by nodeimg from cluster.yaml.\n\
         token-file: \"/etc/rancher/k3s/nodeimg-token\"\n\
         node-name: \"srv-1\"\n\
         cluster-init: true\n"
    );
    assert!(n.to_node_env().contains(
        "NODEIMG_ROLE='cluster-init'\nNODEIMG_K3S_COMMAND='server'\nNODEIMG_SERVER=''\n"
    ));
}

#[test]
fn first_server_without_token_warns() {
    let c = ok("role: cluster-init\nnode_name: srv-1\n");
    assert_eq!(
        c.warnings(),
        vec!["cluster.yaml: no token: k3s generates one on the first server; other nodes will need it (/var/lib/rancher/k3s/server/token)".to_string()]
    );
    let n = c.node(None).unwrap();
    assert!(n.token().is_none());
    assert!(!n.files().contains_key("nodeimg/token"));
    assert!(!n.render_k3s_config(NODE_TOKEN_PATH).contains("token-file"));
}

#[test]
fn short_token_on_joining_node_warns_with_line() {
    let c = ok("server: https://srv:6443\n\ntoken: abc123\nnode_name: a\n");
    assert_eq!(
        c.warnings(),
        vec!["cluster.yaml:3: the token is in k3s's short form, so joining nodes do not verify the server's CA; use the full K10... token from /var/lib/rancher/k3s/server/token to pin it".to_string()]
    );
}

#[test]
fn no_name_warns_and_name_can_be_given_per_build() {
    let c = ok(&format!(
        "server: https://srv:6443\ntoken: {}\n",
        secure_token()
    ));
    assert_eq!(
        c.warnings(),
        vec!["cluster.yaml: no node_name: the node keeps the image's hostname unless a name is given when building; k3s needs a unique name per node".to_string()]
    );
    assert_eq!(c.node_names(), Vec::<String>::new());
    let n = c.node(None).unwrap();
    assert_eq!(n.name, None);
    assert!(!n.render_k3s_config(NODE_TOKEN_PATH).contains("node-name"));
    assert_eq!(
        c.node(Some("worker-7")).unwrap().name.as_deref(),
        Some("worker-7")
    );
    assert_eq!(
        format!("{:#}", c.node(Some("Bad_Name")).unwrap_err()),
        "node name \"Bad_Name\": must be lowercase letters, digits and '-', in dot-separated parts of at most 63 characters"
    );
    let named = ok(&format!(
        "server: https://srv:6443\ntoken: {}\nnode_name: a\n",
        secure_token()
    ));
    assert_eq!(
        format!("{:#}", named.node(Some("b")).unwrap_err()),
        "cluster.yaml: the file names its node \"a\", not \"b\""
    );
    assert_eq!(named.node(Some("a")).unwrap().name.as_deref(), Some("a"));
}

fn inventory_yaml() -> String {
    format!(
        r#"server: https://cp-1.lan:6443
token: {}
labels: {{site: home, tier: "1"}}
taints: ["edge=true:NoSchedule"]
k3s_args: [--kubelet-arg=max-pods=60]
nodes:
  - name: cp-1
    role: cluster-init
  - name: cp-2
    role: server
    labels: [tier=0]
  - name: w-1
    labels: {{gpu: "true"}}
    taints: ["gpu=nvidia:NoExecute"]
    k3s_args: [--kubelet-arg=max-pods=110, --node-ip, 10.0.0.21]
"#,
        secure_token()
    )
}

#[test]
fn inventory_nodes_inherit_and_override() {
    let c = ok(&inventory_yaml());
    assert_eq!(c.warnings(), Vec::<String>::new());
    assert_eq!(c.node_names(), vec!["cp-1", "cp-2", "w-1"]);

    let cp1 = c.node(Some("cp-1")).unwrap();
    assert_eq!(cp1.role, Role::ClusterInit);
    assert_eq!(cp1.server, None, "the first server joins nobody");
    assert!(cp1.render_k3s_config("/t").contains("cluster-init: true\n"));

    let cp2 = c.node(Some("cp-2")).unwrap();
    assert_eq!(cp2.role, Role::Server);
    assert_eq!(cp2.server.as_deref(), Some("https://cp-1.lan:6443"));
    assert_eq!(
        cp2.labels,
        BTreeMap::from([("site".into(), "home".into()), ("tier".into(), "0".into())])
    );

    let w1 = c.node(Some("w-1")).unwrap();
    assert_eq!(w1.role, Role::Agent);
    assert_eq!(
        w1.labels,
        BTreeMap::from([
            ("gpu".into(), "true".into()),
            ("site".into(), "home".into()),
            ("tier".into(), "1".into())
        ])
    );
    assert_eq!(
        w1.taints,
        vec!["edge=true:NoSchedule", "gpu=nvidia:NoExecute"]
    );
    assert_eq!(
        w1.render_k3s_config("/t"),
        r#"# Written by nodeimg from cluster.yaml.
server: "https://cp-1.lan:6443"
token-file: "/t"
node-name: "w-1"
node-label:
  - "gpu=true"
  - "site=home"
  - "tier=1"
node-taint:
  - "edge=true:NoSchedule"
  - "gpu=nvidia:NoExecute"
kubelet-arg:
  - "max-pods=60"
  - "max-pods=110"
node-ip: "10.0.0.21"
"#
    );

    assert_eq!(
        format!("{:#}", c.node(None).unwrap_err()),
        "cluster.yaml: the inventory has 3 nodes; choose one of: cp-1, cp-2, w-1"
    );
    assert_eq!(
        format!("{:#}", c.node(Some("w-2")).unwrap_err()),
        "cluster.yaml: no node \"w-2\" in the inventory (nodes: cp-1, cp-2, w-1)"
    );
}

#[test]
fn k3os_style_file() {
    let c = ok(&format!(
        r#"ssh_authorized_keys:
  - ecdsa-sha2-nistp256 AAAAE2VjZHNh user@host
hostname: k3os-1
k3os:
  server_url: https://192.168.1.10:6443
  token: {}
  labels:
    region: us-west-1
  taints:
    - key1=value1:NoSchedule
  k3s_args:
    - agent
    - --node-ip=192.168.1.20
  dns_nameservers: [1.1.1.1]
  ntp_servers: [0.pool.ntp.org]
"#,
        secure_token()
    ));
    let n = c.node(None).unwrap();
    assert_eq!(n.name.as_deref(), Some("k3os-1"));
    assert_eq!(n.role, Role::Agent);
    assert_eq!(n.server.as_deref(), Some("https://192.168.1.10:6443"));
    assert_eq!(n.nameservers, vec!["1.1.1.1"]);
    assert_eq!(n.ntp_servers, vec!["0.pool.ntp.org"]);
    assert_eq!(
        n.labels.get("region").map(String::as_str),
        Some("us-west-1")
    );
    assert_eq!(n.taints, vec!["key1=value1:NoSchedule"]);
    assert_eq!(
        n.k3s_flags,
        vec![K3sFlag {
            name: "node-ip".into(),
            value: Some("192.168.1.20".into())
        }]
    );
    assert_eq!(
        n.ssh_authorized_keys,
        vec!["ecdsa-sha2-nistp256 AAAAE2VjZHNh user@host"]
    );
}

#[test]
fn k3os_server_subcommand_and_cluster_init_flag() {
    let n = ok("k3os:\n  token: abc\n  k3s_args: [server, --cluster-init]\nhostname: s1\n")
        .node(None)
        .unwrap();
    assert_eq!(n.role, Role::ClusterInit);
    assert!(n.k3s_flags.is_empty());
    let n = ok("k3os:\n  token: abc\n  k3s_args: [server]\nhostname: s1\n")
        .node(None)
        .unwrap();
    assert_eq!(n.role, Role::Server);
}

#[test]
fn airgap_local_k3s_and_token_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("secrets/token"),
        format!("\n  {}  \n", secure_token()),
    )
    .unwrap();
    let c = load_in(
        dir.path(),
        r#"server: https://10.0.0.1:6443
token_file: secrets/token
node_name: edge-1
k3s:
  source: file
  path: bin/k3s-arm64
  airgap_images: images/k3s-airgap-images-arm64.tar.zst
"#,
    )
    .unwrap();
    assert_eq!(c.token_form(), Some(TokenForm::Secure));
    let n = c.node(None).unwrap();
    assert_eq!(n.token().unwrap().expose(), secure_token());
    assert_eq!(
        n.k3s,
        Some(K3sSpec {
            version: None,
            source: K3sSource::File {
                path: dir.path().join("bin/k3s-arm64")
            },
            airgap_images: Some(dir.path().join("images/k3s-airgap-images-arm64.tar.zst")),
        })
    );
    assert!(!n.to_node_env().contains("NODEIMG_K3S_VERSION"));
}

#[test]
fn load_reads_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok"), "short-one\n").unwrap();
    let path = dir.path().join("cluster.yaml");
    std::fs::write(
        &path,
        "server: https://a:6443\ntoken_file: tok\nnode_name: x\n",
    )
    .unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.node(None).unwrap().token().unwrap().expose(), "short-one");
    assert_eq!(
        c.warnings()[0],
        format!("{}:2: the token is in k3s's short form, so joining nodes do not verify the server's CA; use the full K10... token from /var/lib/rancher/k3s/server/token to pin it", path.display())
    );
    let missing = dir.path().join("nope.yaml");
    assert!(format!("{:#}", load(&missing).unwrap_err())
        .starts_with(&format!("reading cluster config {}: ", missing.display())));
}

#[test]
fn registries_are_copied_as_yaml() {
    let c = ok(&format!(
        r#"server: https://a:6443
token: {}
node_name: n
registries:
  mirrors:
    docker.io:
      endpoint:
        - "https://mirror.lan:5000"
    "*": {{}}
  configs:
    "mirror.lan:5000":
      auth:
        username: pull
        password: "reg-pass-123"
      tls:
        insecure_skip_verify: true
      retries: 3
"#,
        secure_token()
    ));
    let n = c.node(None).unwrap();
    let r = n.render_registries().unwrap();
    assert_eq!(
        r,
        r#"# Written by nodeimg from cluster.yaml.
"mirrors":
  "docker.io":
    "endpoint":
      - "https://mirror.lan:5000"
  "*": {}
"configs":
  "mirror.lan:5000":
    "auth":
      "username": "pull"
      "password": "reg-pass-123"
    "tls":
      "insecure_skip_verify": true
    "retries": 3
"#
    );
    // Oracle: the output parses back to the same tree as the input section.
    let back = yaml::parse(&r).unwrap();
    let orig = yaml::parse(
        "mirrors:\n  docker.io:\n    endpoint:\n      - \"https://mirror.lan:5000\"\n  \"*\": {}\n\
         configs:\n  \"mirror.lan:5000\":\n    auth:\n      username: pull\n      password: \"reg-pass-123\"\n    tls:\n      insecure_skip_verify: true\n    retries: 3\n"
    ).unwrap();
    assert_eq!(strip_lines(back), strip_lines(orig));
    assert_eq!(n.files()["nodeimg/registries.yaml"].mode, 0o600);
    // Registry passwords are secrets too.
    assert!(!format!("{n:?}").contains("reg-pass-123"));
    assert!(!format!("{c:?}").contains("reg-pass-123"));
}

/// The tree without line numbers, for structural comparison.
fn strip_lines(n: yaml::Node) -> String {
    fn walk(v: &yaml::Value, out: &mut String) {
        match v {
            yaml::Value::Null => out.push('~'),
            yaml::Value::Bool(b) => out.push_str(&b.to_string()),
            yaml::Value::Number(s) => out.push_str(&format!("#{s}")),
            yaml::Value::Str(s) => out.push_str(&format!("{s:?}")),
            yaml::Value::Seq(items) => {
                out.push('[');
                for i in items {
                    walk(&i.value, out);
                    out.push(',');
                }
                out.push(']');
            }
            yaml::Value::Map(m) => {
                out.push('{');
                for (k, v) in m {
                    walk(&k.value, out);
                    out.push(':');
                    walk(&v.value, out);
                    out.push(',');
                }
                out.push('}');
            }
        }
    }
    let mut s = String::new();
    walk(&n.value, &mut s);
    s
}

#[test]
fn node_env_is_sourceable_by_sh() {
    assert_eq!(sq("it's"), r"'it'\''s'");
    // Oracle: /bin/sh reads our quoting back exactly.
    let tricky = r#"a'b "c" $HOME `x` \n ;|&"#;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("env");
    std::fs::write(&f, format!("X={}\n", sq(tricky))).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(". '{}'; printf %s \"$X\"", f.display()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);

    let n = ok(&agent_yaml()).node(None).unwrap();
    std::fs::write(&f, n.to_node_env()).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". '{}'; printf '%s|%s|%s' \"$NODEIMG_HOSTNAME\" \"$NODEIMG_SERVER\" \"$NODEIMG_NAMESERVERS\"",
            f.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "pi-1|https://10.0.0.1:6443|10.0.0.1 2001:db8::1"
    );
}

#[test]
fn numbers_keep_their_spelling() {
    let n = ok("role: cluster-init\nnode_name: a\nlabels:\n  version: 1.10\n  count: 007\n")
        .node(None)
        .unwrap();
    assert_eq!(n.labels["version"], "1.10");
    assert_eq!(n.labels["count"], "007");
}

// ---- bad files: each with its exact message ----

#[test]
fn unknown_key_suggests_nearest_with_line() {
    let text =
        "server: https://a:6443\ntoken: abc\nnode_name: a\n\n\n# labels next\nlables:\n  a: b\n";
    assert_eq!(
        err(text),
        "cluster.yaml:7: unknown key \"lables\" (did you mean \"labels\"?)"
    );
    assert_eq!(
        err("role: cluster-init\nnode-name: a\n"),
        "cluster.yaml:2: unknown key \"node-name\" (did you mean \"node_name\"?)"
    );
    assert_eq!(
        err("role: cluster-init\nzzzzzz: 1\n"),
        "cluster.yaml:2: unknown key \"zzzzzz\" (valid keys: server, server_url, token, token_file, role, node_name, hostname, labels, taints, k3s_args, ssh_authorized_keys, nameservers, ntp_servers, registries, wifi, k3s, nodes, k3os)"
    );
    assert_eq!(
        err("role: cluster-init\nk3s:\n  versoin: v1.31.4+k3s1\n"),
        "cluster.yaml:3: unknown key \"versoin\" in k3s (did you mean \"version\"?)"
    );
    assert_eq!(
        err("role: cluster-init\nnodes:\n  - name: a\n    lables: [a=b]\n"),
        "cluster.yaml:4: unknown key \"lables\" in nodes (did you mean \"labels\"?)"
    );
    assert_eq!(
        err("role: cluster-init\nregistries:\n  mirror: {}\n"),
        "cluster.yaml:3: unknown key \"mirror\" in registries (did you mean \"mirrors\"?)"
    );
    assert_eq!(
        err("role: cluster-init\nk3os:\n  server: https://a:6443\n"),
        "cluster.yaml:3: unknown key \"server\" in k3os (did you mean \"server_url\"?)"
    );
}

#[test]
fn unsupported_k3os_keys_are_named() {
    assert_eq!(
        err("role: cluster-init\nk3os:\n  modules: [kvm]\n"),
        "cluster.yaml:3: k3os key \"modules\" in k3os is not supported by nodeimg"
    );
    assert_eq!(
        err("role: cluster-init\nwrite_files: []\n"),
        "cluster.yaml:2: k3os key \"write_files\" is not supported by nodeimg"
    );
}

#[test]
fn conflicting_spellings() {
    assert_eq!(
        err("server: https://a:6443\nserver_url: https://b:6443\ntoken: x\n"),
        "cluster.yaml:2: \"server_url\" repeats \"server\" from line 1; keep one"
    );
    assert_eq!(
        err("server: https://a:6443\ntoken: x\nk3os:\n  server_url: https://b:6443\n"),
        "cluster.yaml:4: \"k3os.server_url\" repeats \"server\" from line 1; keep one"
    );
    assert_eq!(
        err("role: cluster-init\nhostname: a\nnode_name: a\n"),
        "cluster.yaml:3: \"node_name\" repeats \"hostname\" from line 2; keep one"
    );
    assert_eq!(
        err("role: cluster-init\nnode_name: a\nnodes:\n  - name: b\n"),
        "cluster.yaml:2: \"node_name\" cannot be combined with \"nodes\" (line 3): each node has its own name"
    );
}

#[test]
fn role_and_server_rules() {
    assert_eq!(
        err("role: agent\ntoken: x\n"),
        "cluster.yaml:1: role agent needs \"server\" (and a token)"
    );
    assert_eq!(
        err("node_name: a\n"),
        "cluster.yaml:1: no \"server\" to join: set server and token, or role: cluster-init for a cluster's first server"
    );
    assert_eq!(
        err("role: cluster-init\nserver: https://a:6443\ntoken: x\n"),
        "cluster.yaml:2: role cluster-init (line 1) starts a new cluster and takes no \"server\""
    );
    assert_eq!(
        err("role: leader\n"),
        "cluster.yaml:1: \"role\" must be agent, server or cluster-init, found \"leader\""
    );
    assert_eq!(
        err("server: https://a:6443\nnode_name: a\n"),
        "cluster.yaml:1: \"server\" is set but there is no \"token\" or \"token_file\""
    );
    assert_eq!(
        err("role: server\nk3s_args: [agent]\n"),
        "cluster.yaml:2: \"k3s_args\" makes this node an agent but role is server (line 1)"
    );
    assert_eq!(
        err("role: cluster-init\nk3s_args: [agent, --cluster-init]\n"),
        "cluster.yaml:2: \"k3s_args\": an agent cannot use --cluster-init"
    );
}

#[test]
fn inventory_errors() {
    assert_eq!(
        err("token: x\nnodes:\n  - name: a\n    role: cluster-init\n  - name: b\n    role: cluster-init\n"),
        "cluster.yaml:5: node \"b\" is a second cluster-init node (the first is \"a\"); a cluster has one"
    );
    assert_eq!(
        err("role: cluster-init\nnodes:\n  - name: a\n  - name: a\n"),
        "cluster.yaml:4: node \"a\" is listed twice (first at line 3)"
    );
    assert_eq!(
        err("token: x\nnodes:\n  - name: a\n    role: cluster-init\n  - name: b\n"),
        "cluster.yaml:5: node \"b\" has no role and there is no \"server\" to join"
    );
    assert_eq!(
        err(
            "token: x\nnodes:\n  - name: a\n    role: cluster-init\n  - name: b\n    role: agent\n"
        ),
        "cluster.yaml:5: node \"b\" has role agent but no \"server\" is given"
    );
    assert_eq!(
        err("role: cluster-init\nnodes: []\n"),
        "cluster.yaml:2: \"nodes\" is empty: list at least one node"
    );
    assert_eq!(
        err("role: cluster-init\nnodes:\n  - role: server\n"),
        "cluster.yaml:3: a node in \"nodes\" has no \"name\""
    );
    assert_eq!(
        err("role: cluster-init\nnodes:\n  - name: Node_1\n"),
        "cluster.yaml:3: node name \"Node_1\": must be lowercase letters, digits and '-', in dot-separated parts of at most 63 characters"
    );
    // A node's k3s_args clashing with the top level's: the node's line, naming the other.
    assert_eq!(
        err("role: cluster-init\nk3s_args: [--debug]\nnodes:\n  - name: a\n    k3s_args:\n      - --debug=false\n"),
        "cluster.yaml:6: node \"a\": k3s_args: --debug is given both with and without a value (the other at line 2)"
    );
}

#[test]
fn token_rules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty"), "\n\n").unwrap();
    std::fs::write(
        dir.path().join("bad"),
        format!("K10{}::node:pw\n", "zz".repeat(32)),
    )
    .unwrap();
    let e = |t: &str| format!("{:#}", load_in(dir.path(), t).unwrap_err());
    assert_eq!(
        e("server: https://a:6443\ntoken: x\ntoken_file: f\n"),
        "cluster.yaml:3: both \"token\" (line 2) and \"token_file\" are given; keep one"
    );
    assert_eq!(
        e("server: https://a:6443\ntoken_file: missing\n"),
        "cluster.yaml:2: reading token_file \"missing\": No such file or directory (os error 2)"
    );
    assert_eq!(
        e("server: https://a:6443\ntoken_file: empty\n"),
        "cluster.yaml:2: token_file \"empty\": the token is empty"
    );
    assert_eq!(
        e("server: https://a:6443\ntoken_file: bad\n"),
        "cluster.yaml:2: token_file \"bad\": the token starts like k3s's secure form but is not K10<64 hex digits>::<user>:<password>"
    );
    assert_eq!(
        e(&format!("server: https://a:6443\ntoken: K10{}::server\n", "ab".repeat(32))),
        "cluster.yaml:2: the token starts like k3s's secure form but is not K10<64 hex digits>::<user>:<password>"
    );
    assert_eq!(
        e("server: https://a:6443\ntoken: \"two words\"\n"),
        "cluster.yaml:2: the token contains whitespace"
    );
    assert_eq!(
        e("server: https://a:6443\ntoken: [a]\n"),
        "cluster.yaml:2: \"token\" must be a string, found a list"
    );
}

#[test]
fn server_url_rules() {
    let cases = [
        ("http://a:6443", "not https://"),
        ("https://a", "no port"),
        ("https://a:0", "bad port"),
        ("https://a:99999", "bad port"),
        ("https://a:6443/x", "no path allowed"),
        ("https://u:p@a:6443", "no user or password allowed"),
        ("https://a b:6443", "bad host"),
    ];
    for (url, why) in cases {
        assert_eq!(
            err(&format!("server: \"{url}\"\ntoken: x\n")),
            format!("cluster.yaml:1: \"server\" must be https://host:port, like https://10.0.0.1:6443 ({why})")
        );
    }
    let n = ok("server: https://[fd00::1]:6443/\ntoken: x\nnode_name: a\n")
        .node(None)
        .unwrap();
    assert_eq!(n.server.as_deref(), Some("https://[fd00::1]:6443"));
}

#[test]
fn labels_taints_keys_and_addresses() {
    let pre = "role: cluster-init\nnode_name: a\n";
    let cases = [
        ("taints: [\"a=b:NoWay\"]\n", "cluster.yaml:3: taint \"a=b:NoWay\": effect must be NoSchedule, PreferNoSchedule or NoExecute"),
        ("taints: [\"a=b\"]\n", "cluster.yaml:3: taint \"a=b\" must be key=value:Effect"),
        ("taints: [\"-a=b:NoSchedule\"]\n", "cluster.yaml:3: taint \"-a=b:NoSchedule\": label key \"-a\" must be at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"),
        ("labels: [\"novalue\"]\n", "cluster.yaml:3: label \"novalue\" must be key=value"),
        ("labels:\n  \"bad key\": x\n", "cluster.yaml:4: label key \"bad key\" must be at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"),
        ("labels:\n  Example.COM/x: y\n", "cluster.yaml:4: label key \"Example.COM/x\": the prefix before '/' must be a DNS name"),
        ("labels:\n  a: \"b c\"\n", "cluster.yaml:4: label \"a\": value \"b c\" must be at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"),
        ("labels: [a=1, a=2]\n", "cluster.yaml:3: label \"a\" is given twice"),
        ("labels: 5\n", "cluster.yaml:3: \"labels\" must be a mapping or a list of \"key=value\", found a number"),
        ("ssh_authorized_keys: [\"github:someone\"]\n", "cluster.yaml:3: ssh_authorized_keys item 1: must start with ssh-ed25519, ssh-rsa, ecdsa-sha2-* or sk-*, found \"github:someone\""),
        ("ssh_authorized_keys:\n  - ssh-ed25519 AAAA x\n  - ssh-rsa\n", "cluster.yaml:5: ssh_authorized_keys item 2: ssh-rsa key has no key data"),
        ("nameservers: [dns.google]\n", "cluster.yaml:3: nameservers: \"dns.google\" is not an IP address"),
        ("k3os:\n  dns_nameservers: [x]\n", "cluster.yaml:4: k3os.dns_nameservers: \"x\" is not an IP address"),
        ("ntp_servers: [\"a b\"]\n", "cluster.yaml:3: ntp_servers: \"a b\" is not a host name or address"),
        ("ntp_servers: pool.ntp.org\n", "cluster.yaml:3: \"ntp_servers\" must be a list, found a string"),
        ("node_name: x\n", "cluster.yaml:3: invalid YAML: duplicate key \"node_name\""),
    ];
    for (tail, want) in cases {
        let got = err(&format!("{pre}{tail}"));
        assert_eq!(got, want, "for {tail:?}");
    }
}

#[test]
fn k3s_args_rules() {
    let pre = "role: cluster-init\nnode_name: a\n";
    let cases = [
        ("k3s_args: [-v, \"3\"]\n", "cluster.yaml:3: \"k3s_args\": write \"-v\" in its long form (--name)"),
        ("k3s_args: [x]\n", "cluster.yaml:3: \"k3s_args\" item 1 is not a flag (flags start with \"--\")"),
        ("k3s_args: [--Bad]\n", "cluster.yaml:3: \"k3s_args\" item 1 is not a valid --flag name"),
        ("k3s_args: [--node-label=a=b]\n", "cluster.yaml:3: \"k3s_args\": --node-label is not allowed here: set it with \"labels\""),
        ("k3s_args: [--config=/x]\n", "cluster.yaml:3: \"k3s_args\": --config is not allowed here: nodeimg writes /etc/rancher/k3s/config.yaml itself"),
        ("k3s_args: [--cluster-init=false]\n", "cluster.yaml:3: \"k3s_args\": use \"role: cluster-init\" instead of --cluster-init"),
        ("k3s_args: [--disable-etcd, --disable-etcd=true]\n", "cluster.yaml:3: k3s_args: --disable-etcd is given both with and without a value"),
        ("k3s_args:\n  - --disable-etcd=true\n  - --debug\n  - --disable-etcd\n", "cluster.yaml:6: k3s_args: --disable-etcd is given both with and without a value (the other at line 4)"),
        ("k3s_args: [\"--a=x\\ny\"]\n", "cluster.yaml:3: \"k3s_args\" contains a control character (newline, tab, ...)"),
    ];
    for (tail, want) in cases {
        assert_eq!(err(&format!("{pre}{tail}")), want, "for {tail:?}");
    }
}

#[test]
fn k3s_section_rules() {
    let pre = "role: cluster-init\nnode_name: a\n";
    let cases = [
        (
            "k3s:\n  version: \"1.31\"\n",
            "cluster.yaml:4: k3s version \"1.31\" is not like v1.31.4+k3s1",
        ),
        (
            "k3s: {}\n",
            "cluster.yaml:3: k3s: \"version\" is needed to download a release",
        ),
        (
            "k3s:\n  source: file\n",
            "cluster.yaml:3: k3s: source: file needs \"path\"",
        ),
        (
            "k3s:\n  source: git\n",
            "cluster.yaml:4: k3s.source must be release or file, found \"git\"",
        ),
        (
            "k3s:\n  version: v1.31.4+k3s1\n  path: k3s\n",
            "cluster.yaml:5: k3s.path goes with source: file",
        ),
        (
            "k3s:\n  source: file\n  path: k3s\n  url_base: http://x\n",
            "cluster.yaml:6: k3s.url_base goes with source: release",
        ),
        (
            "k3s:\n  version: v1.31.4+k3s1\n  url_base: ftp://x\n",
            "cluster.yaml:5: k3s.url_base must be an http:// or https:// URL",
        ),
        (
            "k3s: v1.31.4+k3s1\n",
            "cluster.yaml:3: \"k3s\" must be a mapping, found a string",
        ),
    ];
    for (tail, want) in cases {
        assert_eq!(err(&format!("{pre}{tail}")), want, "for {tail:?}");
    }
    let n = ok(&format!(
        "{pre}k3s:\n  version: v1.31.4+k3s1\n  url_base: http://mirror.lan/k3s/\n"
    ))
    .node(None)
    .unwrap();
    assert_eq!(
        n.k3s.unwrap().source,
        K3sSource::Release {
            url_base: "http://mirror.lan/k3s".into()
        }
    );
}

#[test]
fn yaml_level_errors() {
    assert_eq!(err(""), "cluster.yaml:1: the file is empty");
    assert_eq!(
        err("- a\n- b\n"),
        "cluster.yaml:1: expected a mapping of settings, found a list"
    );
    assert_eq!(
        err("role: cluster-init\nrole: agent\n"),
        "cluster.yaml:2: invalid YAML: duplicate key \"role\""
    );
    assert_eq!(
        err("role: cluster-init\nlabels: [a=b\n"),
        "cluster.yaml:2: invalid YAML: unclosed bracket '['"
    );
}

// ---- the token never leaks ----

#[test]
fn token_never_printed() {
    let tok = secure_token();
    let check = |s: &str, what: &str| {
        assert!(!s.contains(PASSWORD), "{what} leaks the token: {s}");
        assert!(!s.contains(&tok), "{what} leaks the token: {s}");
    };
    for text in [agent_yaml(), inventory_yaml()] {
        let c = ok(&text);
        check(&format!("{c:?}"), "ClusterConfig Debug");
        check(&format!("{c:#?}"), "ClusterConfig pretty Debug");
        check(&format!("{c}"), "ClusterConfig Display");
        for w in c.warnings() {
            check(&w, "warning");
        }
        for name in c.node_names() {
            let n = c.node(Some(&name)).unwrap();
            check(&format!("{n:?}"), "NodeConfig Debug");
            check(&format!("{n}"), "NodeConfig Display");
            check(&format!("{:?}", n.files()), "files Debug");
            check(&format!("{:?}", n.token_file_content()), "token file Debug");
            check(&n.to_node_env(), "node.env");
            check(&n.render_k3s_config(NODE_TOKEN_PATH), "k3s config");
            // ... but the token file itself holds it.
            assert_eq!(n.token().unwrap().expose(), tok);
        }
    }
    // Errors on files holding the token, including broken YAML around it.
    let bad_files = [
        format!("server: http://a:6443\ntoken: {tok}\n"),
        format!("server: https://a:6443\ntoken: {tok}\ntoken_file: x\n"),
        format!("server: https://a:6443\ntoken: {tok} trailing\n"),
        format!("server: https://a:6443\ntoken: {tok}\n bad: [\n"),
        format!("server: https://a:6443\ntoken: \"{tok}\nnode_name: a\n"),
        format!("server: https://a:6443\ntoken: {tok}\ntoken: {tok}\n"),
        format!("server: https://a:6443\ntoken: {{{tok}: 1}}\n"),
        format!("server: https://a:6443\ntoken: x\nk3s_args: [--token={tok}]\n"),
        format!("server: https://a:6443\ntoken: x\nk3s_args: [--token, {tok}]\n"),
        format!("server: https://a:6443\ntoken: x\nk3s_args: [{tok}]\n"),
        format!("server: https://a:6443\ntoken: x\nk3s_args: [-t, {tok}]\n"),
        format!("server: https://a:6443\ntoken: x\nk3s_args: [--{tok}]\n"),
        format!("server: https://a:6443\n{tok}: x\n"),
        format!("server: https://a:6443\ntoken: !!binary {tok}\n"),
    ];
    for f in &bad_files {
        let e = err(f);
        check(&e, "error");
        assert!(e.starts_with("cluster.yaml:"), "{e}");
    }
    // A secret-looking k3s flag is hidden in Debug output.
    let n = ok("role: cluster-init\nnode_name: a\nk3s_args: [--agent-token=agent-secret-1]\n")
        .node(None)
        .unwrap();
    assert!(!format!("{n:?}").contains("agent-secret-1"));
    assert!(n
        .render_k3s_config("/t")
        .contains("agent-token: \"agent-secret-1\"\n"));
}

#[test]
fn hide_url_credentials_hides_userinfo_only() {
    let cases = [
        (
            "postgres://user:pass@db/k3s",
            "postgres://<redacted>@db/k3s",
        ),
        (
            "mysql://k3s:pw@tcp(db:3306)/k3s",
            "mysql://<redacted>@tcp(db:3306)/k3s",
        ),
        // An unescaped '/' or '@' in the password is hidden with it.
        ("https://u:p/a@ss@h:1/x", "https://<redacted>@h:1/x"),
        ("https://user@host/", "https://<redacted>@host/"),
        // Several URLs, in quotes, next to other text.
        (
            "a \"http://a:b@h\" and 'ftp://c:d@i/'",
            "a \"http://<redacted>@h\" and 'ftp://<redacted>@i/'",
        ),
        // Nothing to hide.
        ("https://10.0.0.1:6443", "https://10.0.0.1:6443"),
        ("user:pass@host", "user:pass@host"),
        ("x@y://z", "x@y://z"),
        ("", ""),
        ("://", "://"),
    ];
    for (input, want) in cases {
        assert_eq!(hide_url_credentials(input), want, "for {input:?}");
    }
}

#[test]
fn url_credentials_in_k3s_args_are_never_shown() {
    const DB_PASSWORD: &str = "db-pa55w0rd-do-not-print";
    let c = ok(&format!(
        "role: cluster-init\nnode_name: a\nk3s_args:\n  - --datastore-endpoint=postgres://k3s:{DB_PASSWORD}@db:5432/k3s\n  - --etcd-s3-endpoint\n  - https://key:{DB_PASSWORD}@s3.local\n"
    ));
    let n = c.node(None).unwrap();
    for (what, shown) in [
        ("ClusterConfig Display", format!("{c}")),
        ("ClusterConfig Debug", format!("{c:?}")),
        ("NodeConfig Display", format!("{n}")),
        ("NodeConfig Debug", format!("{n:#?}")),
        ("node.env", n.to_node_env()),
    ] {
        assert!(!shown.contains(DB_PASSWORD), "{what} shows it: {shown}");
    }
    // The rest of the value stays visible ...
    let shown = format!("{n}");
    assert!(
        shown.contains("--datastore-endpoint=\"postgres://<redacted>@db:5432/k3s\""),
        "{shown}"
    );
    assert!(shown.contains("https://<redacted>@s3.local"), "{shown}");
    // ... and the node's k3s config, which k3s reads, keeps the real value.
    let cfg = n.render_k3s_config("/t");
    assert!(
        cfg.contains(&format!(
            "datastore-endpoint: \"postgres://k3s:{DB_PASSWORD}@db:5432/k3s\"\n"
        )),
        "{cfg}"
    );
    assert!(cfg.contains(&format!(
        "etcd-s3-endpoint: \"https://key:{DB_PASSWORD}@s3.local\"\n"
    )));
}

#[test]
fn url_credentials_in_errors_are_never_shown() {
    const PW: &str = "pa55-in-an-error";
    let cases = [
        // An error that quotes a taint, one that quotes an ntp server.
        format!("role: cluster-init\nnode_name: a\ntaints: [\"http://u:{PW}@h:NoWay\"]\n"),
        format!("role: cluster-init\nnode_name: a\nntp_servers: [\"ntp://u:{PW}@h\"]\n"),
        // server refuses user information without quoting it.
        format!("server: https://u:{PW}@a:6443\ntoken: x\n"),
    ];
    for f in &cases {
        let e = err(f);
        assert!(e.starts_with("cluster.yaml:"), "{e}");
        assert!(!e.contains(PW), "{e}");
    }
    assert!(err(&cases[0]).contains("http://<redacted>@h:NoWay"));
}

/// docs/examples/cluster.yaml, the file users start from, loads: agents
/// joining a server, an inventory of a few nodes.
#[test]
fn the_example_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node-token"), secure_token()).unwrap();
    let c = ok_in(dir.path(), include_str!("../../docs/examples/cluster.yaml"));
    let names = c.node_names();
    assert_eq!(names, ["pi-1", "pi-2", "pi-3"]);
    for n in &names {
        let node = c.node(Some(n)).unwrap();
        assert_eq!(node.role, Role::Agent, "{n}");
        assert!(node.server.is_some() && node.token().is_some(), "{n}");
    }
    assert_eq!(c.warnings(), Vec::<String>::new());
}

/// The examples in docs/cluster-yaml.md load, and the rendered k3s config
/// shown there is what the agent example gives.
#[test]
fn documented_examples_load() {
    let doc = include_str!("../../docs/cluster-yaml.md");
    let blocks: Vec<&str> = doc
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 6, "one rendered config and five examples");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    for f in ["node-token", "cluster-token"] {
        std::fs::write(dir.path().join("secrets").join(f), secure_token()).unwrap();
    }
    let mut configs = Vec::new();
    for b in &blocks[1..] {
        let text = b.replace("K10<64 hex digits>::server:<password>", &secure_token());
        match load_in(dir.path(), &text) {
            Ok(c) => configs.push(c),
            Err(e) => panic!("example fails: {e:#}\n{b}"),
        }
    }
    let agent = configs[0].node(None).unwrap();
    // The rendered example shows one kubelet-arg list, the labels and taints.
    assert_eq!(agent.render_k3s_config(NODE_TOKEN_PATH), blocks[0]);
    assert_eq!(configs[2].node_names(), vec!["cp-1", "cp-2", "cp-3", "w-1"]);
    for c in &configs {
        for name in c.node_names() {
            c.node(Some(&name)).unwrap();
        }
    }
}

#[test]
fn wifi_renders_wpa_supplicant_config() {
    let c = ok(&format!(
        "server: https://a:6443\ntoken: {}\nnode_name: n\n\
         wifi:\n  ssid: \"Home Net\"\n  psk: \"wifi-pass-123\"\n  country: DE\n",
        secure_token()
    ));
    let n = c.node(None).unwrap();
    let f = &n.files()["nodeimg/wifi.conf"];
    assert_eq!(f.mode, 0o600);
    assert_eq!(
        String::from_utf8(f.data.clone()).unwrap(),
        "# Written by nodeimg from cluster.yaml (wifi).\n\
         ctrl_interface=DIR=/run/wpa_supplicant\n\
         country=DE\n\
         network={\n\tssid=486f6d65204e6574\n\tpsk=\"wifi-pass-123\"\n\tkey_mgmt=WPA-PSK\n}\n"
    );
    // The psk is a secret like the token.
    assert!(!format!("{n:?}").contains("wifi-pass-123"));
    assert!(!format!("{c:?}").contains("wifi-pass-123"));
    // A raw 256-bit key is written unquoted, as wpa_supplicant wants it.
    let raw = "0123456789abcdef".repeat(4);
    let c = ok(&format!(
        "server: https://a:6443\ntoken: {}\nnode_name: n\nwifi:\n  ssid: x\n  psk: \"{raw}\"\n",
        secure_token()
    ));
    let f = &c.node(None).unwrap().files()["nodeimg/wifi.conf"];
    let text = String::from_utf8(f.data.clone()).unwrap();
    assert!(text.contains(&format!("\tpsk={raw}\n")), "{text}");
    assert!(!text.contains("country="), "{text}");
}

#[test]
fn wifi_psk_file_is_read_beside_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wifi-psk"), "file-pass-456\n").unwrap();
    let c = ok_in(
        dir.path(),
        &format!(
            "server: https://a:6443\ntoken: {}\nnode_name: n\n\
             wifi:\n  ssid: lan\n  psk_file: wifi-psk\n",
            secure_token()
        ),
    );
    let f = &c.node(None).unwrap().files()["nodeimg/wifi.conf"];
    assert!(String::from_utf8(f.data.clone())
        .unwrap()
        .contains("\tpsk=\"file-pass-456\"\n"));
}

#[test]
fn bad_wifi_is_an_error_with_its_line_and_never_the_psk() {
    let base = format!("server: https://a:6443\ntoken: {}\n", secure_token());
    for (wifi, line, want) in [
        ("wifi:\n  ssid: x\n  psk: short\n", 5, "8 to 63 characters"),
        (
            "wifi:\n  ssid: x\n  psk: \"has\\\"quote1\"\n",
            5,
            "printable ASCII",
        ),
        ("wifi:\n  psk: long-enough-1\n", 3, "needs \"ssid\""),
        ("wifi:\n  ssid: x\n", 3, "needs \"psk\""),
        (
            "wifi:\n  ssid: x\n  psk: long-enough-1\n  country: de\n",
            6,
            "two-letter",
        ),
        ("wifi:\n  ssid: x\n  pks: long-enough-1\n", 5, "unknown key"),
        (
            "wifi:\n  ssid: x\n  psk: long-enough-1\n  psk_file: f\n",
            6,
            "both \"psk\" and \"psk_file\"",
        ),
        (
            "wifi:\n  ssid: \"123456789012345678901234567890123\"\n  psk: long-enough-1\n",
            4,
            "1 to 32 bytes",
        ),
        ("wifi: yes\n", 3, "must be a mapping"),
    ] {
        let e = err(&format!("{base}{wifi}"));
        assert!(
            e.starts_with(&format!("cluster.yaml:{line}: ")) && e.contains(want),
            "{wifi:?}: {e}"
        );
        for secret in ["short", "has\"quote1", "long-enough-1"] {
            assert!(!e.contains(secret), "{wifi:?} quotes the psk: {e}");
        }
    }
}
