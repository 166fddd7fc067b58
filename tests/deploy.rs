//! The deployment files checked against the tools that will read them: the
//! systemd units by `systemd-analyze` (verify, and the sandbox rated by
//! `security`), the Kubernetes manifests against the Kubernetes schema
//! (`kubernetes-validate`), and the configs they carry by `wsgate check`.
//! The files must also agree with each other: ports, names, paths and the
//! stop timeouts against the drain the config asks for.
//!
//! The tools are installed by `.ci/run`; a missing one fails the test with
//! that advice instead of skipping, so a CI run cannot pass without them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Runs an external tool; a tool that is not installed fails the test
/// naming the script that installs it.
fn run_tool(program: &str, args: &[&str], dir: &Path) -> Output {
    match Command::new(program).args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{program} is not installed: run .ci/run, which installs what tests/deploy.rs needs"
        ),
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `wsgate check` on a config file.
fn wsgate_check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run wsgate check")
}

// === systemd ===

/// A unit file as `key -> values` per section (repeated keys accumulate),
/// as systemd reads it: comments and blank lines skipped.
fn unit(rel: &str) -> BTreeMap<String, Vec<String>> {
    let mut keys = BTreeMap::new();
    let mut section = String::new();
    for line in read(rel).lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{rel}: not a key=value line: {line}"));
        keys.entry(format!("{section}.{k}"))
            .or_insert_with(Vec::new)
            .push(v.to_string());
    }
    keys
}

fn one<'a>(u: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match u.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}: expected one value, found {other:?}"),
    }
}

/// The systemd units, with the drop-in in its `.d` folder, copied to a temp
/// dir as systemd would find them; `ExecStart`'s binary is the one this test
/// run built, since verify insists that it exists.
fn installed_units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = read("systemd/wsgate.service");
    assert!(service.contains("ExecStart=/usr/local/bin/wsgate run"));
    let service = service.replace("/usr/local/bin/wsgate", env!("CARGO_BIN_EXE_wsgate"));
    std::fs::write(dir.path().join("wsgate.service"), service).expect("write");
    for f in ["wsgate.socket", "wsgate-admin.socket"] {
        std::fs::write(dir.path().join(f), read(&format!("systemd/{f}"))).expect("write");
    }
    let dropins = dir.path().join("wsgate.service.d");
    std::fs::create_dir(&dropins).expect("mkdir");
    std::fs::write(
        dropins.join("socket-activation.conf"),
        read("systemd/socket-activation.conf"),
    )
    .expect("write");
    dir
}

/// `systemd-analyze verify` exits 0 even for unknown keys (it only warns):
/// any output at all is a failure.
#[test]
fn systemd_units_pass_verify_without_a_warning() {
    let dir = installed_units();
    let units = ["wsgate.service", "wsgate.socket", "wsgate-admin.socket"];
    let args: Vec<String> = units.iter().map(|u| format!("./{u}")).collect();
    let mut all = vec!["verify"];
    all.extend(args.iter().map(String::as_str));
    let out = run_tool("systemd-analyze", &all, dir.path());
    assert!(
        out.status.success() && both(&out).trim().is_empty(),
        "systemd-analyze verify: {}\n{}",
        out.status,
        both(&out)
    );
}

/// The sandbox is rated by systemd itself, on the unit as shipped.
#[test]
fn systemd_analyze_security_rates_the_unit_under_2() {
    let path = root().join("systemd/wsgate.service");
    let path = path.to_str().expect("utf-8 path");
    let out = run_tool(
        "systemd-analyze",
        &["security", "--offline=true", path],
        root(),
    );
    let text = both(&out);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for wsgate.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(level < 2.0, "exposure {level}, over 2.0:\n{text}");
}

/// What wsgate's own code relies on (h3's contract): notify with a
/// watchdog, SIGHUP for reload, the config path, one capability, and a stop
/// timeout longer than the drain the shipped config asks for.
#[test]
fn the_service_unit_keeps_the_contract_with_wsgate() {
    let u = unit("systemd/wsgate.service");
    assert_eq!(one(&u, "Service.Type"), "notify");
    assert_eq!(one(&u, "Service.NotifyAccess"), "main");
    assert!(secs(one(&u, "Service.WatchdogSec")) > 0.0);
    assert_eq!(
        one(&u, "Service.ExecStart"),
        "/usr/local/bin/wsgate run --config /etc/wsgate/wsgate.toml"
    );
    assert_eq!(one(&u, "Service.ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one(&u, "Service.KillSignal"), "SIGTERM");
    assert_eq!(
        one(&u, "Service.CapabilityBoundingSet"),
        "CAP_NET_BIND_SERVICE"
    );
    let nofile: u64 = one(&u, "Service.LimitNOFILE").parse().expect("a number");
    assert!(nofile >= 65536, "LimitNOFILE {nofile}");
    let config = toml_file(&read("systemd/wsgate.toml"));
    let stop = secs(one(&u, "Service.TimeoutStopSec"));
    let drain = drain_secs(&config);
    assert!(
        stop >= drain + 10.0,
        "TimeoutStopSec {stop}s leaves no margin over the drain ({drain}s)"
    );
}

/// Each socket unit names its socket after a listener of the shipped
/// config (or `admin`) and listens where that listener binds.
#[test]
fn socket_units_name_their_sockets_after_the_config() {
    let config = toml_file(&read("systemd/wsgate.toml"));
    let mut binds: BTreeMap<String, String> = config["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| (str_of(&l["name"]), str_of(&l["bind"])))
        .collect();
    binds.insert("admin".into(), str_of(&config["admin"]["bind"]));
    for f in ["wsgate.socket", "wsgate-admin.socket"] {
        let u = unit(&format!("systemd/{f}"));
        let name = one(&u, "Socket.FileDescriptorName");
        let bind = binds
            .get(name)
            .unwrap_or_else(|| panic!("{f}: no listener named {name} in systemd/wsgate.toml"));
        let listen = one(&u, "Socket.ListenStream");
        // `443` alone is [::]:443 with IPv4 too: the same as 0.0.0.0:443.
        let port = bind.rsplit(':').next().expect("port");
        assert!(
            listen == bind.as_str() || (listen == port && bind.starts_with("0.0.0.0:")),
            "{f}: ListenStream={listen}, but {name} binds {bind}"
        );
        assert_eq!(one(&u, "Socket.Service"), "wsgate.service");
    }
    let dropin = unit("systemd/socket-activation.conf");
    assert_eq!(
        one(&dropin, "Service.Sockets"),
        "wsgate.socket wsgate-admin.socket"
    );
}

#[test]
fn the_systemd_sample_config_passes_wsgate_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = read("systemd/wsgate.toml");
    let config = dir.path().join("wsgate.toml");
    std::fs::write(&config, &text).expect("write");
    provide_files(dir.path(), &toml_file(&text));
    let out = wsgate_check(&config);
    assert!(out.status.success(), "wsgate check: {}", both(&out));
}

// === Kubernetes ===

const MANIFESTS: [&str; 4] = [
    "configmap.yaml",
    "deployment.yaml",
    "service.yaml",
    "pdb.yaml",
];

/// Every document of a YAML file, as JSON, read by PyYAML (which the
/// validator installs): the same parser semantics the tooling uses.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let path = root().join(rel);
    let script = "import json, sys, yaml; \
                  print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = run_tool(
        "python3",
        &["-c", script, path.to_str().expect("utf-8 path")],
        root(),
    );
    assert!(
        out.status.success(),
        "{rel}: cannot read the YAML (PyYAML comes with kubernetes-validate: run .ci/run):\n{}",
        both(&out)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn manifest(file: &str) -> Value {
    let mut docs = yaml_docs(&format!("deploy/kubernetes/{file}"));
    assert_eq!(docs.len(), 1, "{file}: one document");
    docs.remove(0)
}

#[test]
fn kubernetes_manifests_match_the_kubernetes_schema() {
    let dir = root().join("deploy/kubernetes");
    for file in MANIFESTS {
        let out = run_tool(
            "python3",
            &["-m", "kubernetes_validate", "--strict", file],
            &dir,
        );
        assert!(
            out.status.success() && both(&out).contains("passed"),
            "kubernetes-validate {file} (installed by .ci/run): {}",
            both(&out)
        );
    }
    // kustomization.yaml lists every manifest.
    let kustomize = yaml_docs("deploy/kubernetes/kustomization.yaml");
    let listed: Vec<String> = kustomize[0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(listed, MANIFESTS);
}

/// The TOML inside the ConfigMap, as the pod will see it.
fn configmap_toml() -> String {
    str_of(&manifest("configmap.yaml")["data"]["wsgate.toml"])
}

#[test]
fn the_configmap_config_passes_wsgate_check() {
    let text = configmap_toml();
    // Laid out as in the pod: config/, tls/ and admin/ side by side.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config/wsgate.toml");
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    std::fs::write(&config, &text).expect("write");
    provide_files(&dir.path().join("config"), &toml_file(&text));
    let out = wsgate_check(&config);
    assert!(out.status.success(), "wsgate check: {}", both(&out));
}

/// The Deployment, Service and PDB agree with the config in the ConfigMap:
/// mounts and paths, probe ports, listener ports, grace period.
#[test]
fn the_deployment_agrees_with_its_config() {
    let config = toml_file(&configmap_toml());
    let deploy = manifest("deployment.yaml");
    let spec = &deploy["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(config["runtime"]["watch_config"], true);

    // The config comes from the ConfigMap mounted as a folder: a subPath
    // mount would never see an update.
    let volume = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"] == "wsgate-config")
        .expect("a volume of the ConfigMap");
    let mount = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the ConfigMap mounted");
    assert!(mount.get("subPath").is_none(), "subPath: {mount}");
    let args: Vec<String> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(str_of)
        .collect();
    let at = args.iter().position(|a| a == "--config").expect("--config");
    assert_eq!(
        args[at + 1],
        format!("{}/wsgate.toml", str_of(&mount["mountPath"]))
    );

    // Probes on the admin port, which the Service does not publish.
    let port_of = |name: &str| {
        c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .expect("number")
    };
    assert_eq!(port_of("admin"), port(&config["admin"]["bind"]));
    // The wide source-port range leaves out every port the pod listens on,
    // or a backend connection could hold one when the container restarts.
    let reserved = spec["securityContext"]["sysctls"]
        .as_array()
        .expect("sysctls")
        .iter()
        .find(|s| s["name"] == "net.ipv4.ip_local_reserved_ports")
        .map(|s| str_of(&s["value"]))
        .expect("ip_local_reserved_ports set");
    for p in c["ports"].as_array().expect("ports") {
        let n = p["containerPort"].as_u64().expect("number").to_string();
        assert!(
            reserved.split(',').any(|r| r.trim() == n),
            "container port {n} not in ip_local_reserved_ports {reserved}"
        );
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    // shutdown_delay does the waiting a preStop sleep would do.
    assert!(c["lifecycle"]["preStop"].is_null());

    let listeners: Vec<u64> = config["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| port(&l["bind"]))
        .collect();
    let service = manifest("service.yaml");
    assert_eq!(service["spec"]["sessionAffinity"], "None");
    let published: Vec<u64> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            assert_eq!(p["protocol"], "TCP");
            port_of(&str_of(&p["targetPort"]))
        })
        .collect();
    assert_eq!(published, listeners, "the Service publishes every listener");
    assert!(!published.contains(&port_of("admin")));

    let grace = deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("terminationGracePeriodSeconds");
    let drain = drain_secs(&config);
    assert!(grace >= drain + 10.0, "grace {grace}s, drain {drain}s");

    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(c["resources"]["requests"]["memory"].is_string());

    let pdb = manifest("pdb.yaml");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        service["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );
}

// === the configs the files carry ===

fn toml_file(text: &str) -> Value {
    let v: toml::Value = toml::from_str(text).expect("TOML");
    serde_json::to_value(v).expect("as JSON")
}

fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

fn port(bind: &Value) -> u64 {
    str_of(bind)
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {bind}"))
}

fn secs(text: &str) -> f64 {
    humantime::parse_duration(text.trim_matches('"'))
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .as_secs_f64()
}

fn duration_key(table: &Value, key: &str) -> Option<f64> {
    table.get(key).map(|v| secs(&str_of(v)))
}

/// The longest a stop may take with this config: `[runtime]
/// shutdown_delay`, then the closes spread over `shutdown_spread`, then up
/// to `shutdown_timeout` for the last closing handshakes. Without
/// `shutdown_timeout` the drain ends after `[timeouts] close` plus one
/// second (the built-in bound).
fn drain_secs(config: &Value) -> f64 {
    let runtime = &config["runtime"];
    let close = duration_key(&config["timeouts"], "close").unwrap_or(5.0);
    duration_key(runtime, "shutdown_delay").unwrap_or(0.0)
        + duration_key(runtime, "shutdown_spread").unwrap_or(0.0)
        + duration_key(runtime, "shutdown_timeout").unwrap_or(close + 1.0)
}

/// Writes the files a config names (certificates, keys, the admin token)
/// relative to `dir`, the config's folder, so `wsgate check` can read them.
fn provide_files(dir: &Path, config: &Value) {
    let put = |rel: &str, content: &str| {
        let path: PathBuf = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    };
    if let Some(token) = config["admin"].get("token_file") {
        put(&str_of(token), "test-token\n");
    }
    for l in config["listeners"].as_array().expect("listeners") {
        if let Some(tls) = l.get("tls") {
            let (_, cert, key) =
                wsgate::demo::make_certificates(&["localhost"]).expect("certificates");
            put(&str_of(&tls["cert"]), &cert);
            put(&str_of(&tls["key"]), &key);
        }
    }
}

// === a ConfigMap update, as the kubelet writes it ===

/// How long any single expected event may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One plain HTTP GET on the admin listener; `None` while it is not up.
fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(WAIT)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Polls until `pred` holds for the answer to `path`, or fails naming `what`.
fn wait_for(port: u16, path: &str, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if get(port, path).is_some_and(|a| pred(&a)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running wsgate child, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The kubelet never writes a ConfigMap's file in place: it writes a new
/// timestamped folder, points a new `..data_tmp` symlink at it and renames
/// that over `..data`; `wsgate.toml` itself is a symlink into `..data` that
/// never changes. The watch must see that rename.
#[test]
fn a_configmap_update_reaches_a_running_wsgate() {
    let (admin, public) = (free_port(), free_port());
    let config = |upstream: &str| {
        format!(
            "[runtime]\nwatch_config = true\n[admin]\nbind = \"127.0.0.1:{admin}\"\n\
             [[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:{public}\"\n\
             [[routes]]\nupstream = \"{upstream}\"\n\
             [upstreams.{upstream}]\nservers = [\"127.0.0.1:9\"]\n"
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let volume = dir.path();
    let first = volume.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir(&first).expect("mkdir");
    std::fs::write(first.join("wsgate.toml"), config("first")).expect("write");
    std::os::unix::fs::symlink(first.file_name().expect("name"), volume.join("..data"))
        .expect("symlink");
    std::os::unix::fs::symlink("..data/wsgate.toml", volume.join("wsgate.toml")).expect("symlink");

    let _wsgate = Child(
        Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(["run", "--config"])
            .arg(volume.join("wsgate.toml"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn wsgate"),
    );
    wait_for(admin, "/api/config", "wsgate to start", |a| {
        a.contains("\"first\"")
    });

    // The kubelet's update (AtomicWriter): new folder, new link, rename.
    let second = volume.join("..2026_01_01_00_01_00.000000002");
    std::fs::create_dir(&second).expect("mkdir");
    std::fs::write(second.join("wsgate.toml"), config("second")).expect("write");
    std::os::unix::fs::symlink(second.file_name().expect("name"), volume.join("..data_tmp"))
        .expect("symlink");
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).expect("rename");
    std::fs::remove_dir_all(&first).expect("remove the old folder");

    wait_for(
        admin,
        "/api/config",
        "the ConfigMap update to be reloaded",
        |a| a.contains("\"second\""),
    );
}
