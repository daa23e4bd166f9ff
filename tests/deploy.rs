//! The deployment manifests under `deploy/kubernetes`: every one validates against the Kubernetes
//! schemas, the Prometheus Operator resources select something that exists, the pod specs keep
//! what the README promises (security context, probes, resources, grace period), and the TOML in
//! every ConfigMap passes `account-gate check-config`. The sidecar Component is also rendered
//! onto a Deployment that is not the example (`tests/fixtures/sidecar-component`), and the
//! Grafana dashboard's ConfigMap must hold the dashboard.
//!
//! Each kustomization is rendered with `kubectl kustomize` or `kustomize build` when either is
//! installed, else by a fallback in this file that applies what the manifests use (resources,
//! components, ConfigMap generators, strategic-merge patches, labels, images) and refuses
//! anything else. When kustomize is installed, the fallback's rendering of every kustomization
//! must equal kustomize's; under `CI=true` a missing kustomize fails that test rather than
//! skipping it. Schema validation uses the Python package `kubernetes-validate`; when it is not
//! importable it is installed with pip into a cache under `target/` (PyPI is the only network
//! this needs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_account-gate");
/// The gateway's container name in every variant.
const GATEWAY: &str = "account-gate";
/// The ConfigMap key the gateway's configuration is mounted from.
const CONFIG_KEY: &str = "account-gate.toml";
/// The label by which Grafana's sidecar finds dashboard ConfigMaps.
const DASHBOARD_LABEL: &str = "grafana_dashboard";

/// Loads YAML (rendered on stdin, or the files a kustomization lists), validates every core
/// resource against the schemas of Kubernetes 1.29 (the oldest with native sidecars) and of the
/// newest version the package knows, strictly (unknown fields are errors), and prints the
/// documents and the problems as JSON.
const VALIDATE_PY: &str = r#"
import json, os, sys
import yaml
import kubernetes_validate
from kubernetes_validate.utils import latest_version

# What the fallback understands of a kustomization (or a Component); anything else is refused,
# never ignored: a field it skipped would make it render something kustomize would not.
FALLBACK_FIELDS = {"apiVersion", "kind", "labels", "resources", "components",
                   "configMapGenerator", "patches", "images"}
# Strategic-merge keys of the lists a pod spec patch may touch; any other list is replaced.
MERGE_KEYS = {"initContainers": "name", "containers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}

def fail(message):
    sys.exit(f"{message}: the fallback renderer cannot apply it; install kubectl or kustomize")

def load_yaml(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]

def strategic_merge(base, patch, key=None):
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for field, value in patch.items():
            if field.startswith("$"):
                fail(f"patch directive {field}")
            if value is None:
                merged.pop(field, None)
            elif field in merged:
                merged[field] = strategic_merge(merged[field], value, field)
            else:
                merged[field] = value
        return merged
    merge_key = MERGE_KEYS.get(key)
    if isinstance(base, list) and isinstance(patch, list) and merge_key:
        # As kustomize orders them: the patch's entries first, then the others.
        old = {item[merge_key]: item for item in base}
        merged = [strategic_merge(old[item[merge_key]], item) if item[merge_key] in old else item
                  for item in patch]
        patched = {item[merge_key] for item in patch}
        return merged + [item for item in base if item[merge_key] not in patched]
    return patch

def selected(doc, target):
    unknown = sorted(set(target) - {"kind", "name", "labelSelector"})
    if unknown:
        fail(f"patch target fields {unknown}")
    if "kind" in target and doc.get("kind") != target["kind"]:
        return False
    if "name" in target and doc["metadata"].get("name") != target["name"]:
        return False
    labels = doc["metadata"].get("labels") or {}
    for requirement in filter(None, target.get("labelSelector", "").split(",")):
        label, equals, value = requirement.partition("=")
        if not equals or label.endswith("!") or value.startswith("="):
            fail(f"label selector {requirement!r}")
        if labels.get(label.strip()) != value.strip():
            return False
    return True

def apply_patches(directory, kustomization, docs):
    for entry in kustomization.get("patches", []):
        unknown = sorted(set(entry) - {"path", "patch", "target"})
        if unknown:
            fail(f"{directory}: patch fields {unknown}")
        if "path" in entry:
            patches = load_yaml(os.path.join(directory, entry["path"]))
        else:
            patches = [doc for doc in yaml.safe_load_all(entry["patch"]) if doc]
        if len(patches) != 1 or not isinstance(patches[0], dict):
            fail(f"{directory}: a patch that is no single strategic-merge document (JSON 6902?)")
        patch = patches[0]
        target = entry.get("target") or {"kind": patch.get("kind"),
                                          "name": patch.get("metadata", {}).get("name")}
        hits = 0
        for i, doc in enumerate(docs):
            if selected(doc, target):
                name = doc["metadata"]["name"]
                docs[i] = strategic_merge(doc, patch)
                # With a target, kustomize patches each selected resource whatever the patch's
                # own name says.
                docs[i]["metadata"]["name"] = name
                hits += 1
        if hits == 0 and "target" not in entry:
            sys.exit(f"{directory}: the patch {target} matches no resource")

def generate(directory, kustomization, docs):
    for generator in kustomization.get("configMapGenerator", []):
        unknown = sorted(set(generator) - {"name", "files", "behavior", "options"})
        options = generator.get("options", {})
        unknown += sorted(set(options) - {"disableNameSuffixHash", "labels", "annotations"})
        if unknown:
            fail(f"{directory}: configMapGenerator fields {unknown}")
        if not options.get("disableNameSuffixHash"):
            fail(f"{directory}: ConfigMap {generator['name']} gets a content hash in its name")
        data = {}
        for spec in generator.get("files", []):
            key, _, file = spec.rpartition("=")
            with open(os.path.join(directory, file)) as f:
                data[key or os.path.basename(file)] = f.read()
        metadata = {"name": generator["name"]}
        for field in ["labels", "annotations"]:
            if options.get(field):
                metadata[field] = dict(options[field])
        configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        existing = [i for i, doc in enumerate(docs)
                    if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == metadata["name"]]
        behavior = generator.get("behavior", "create")
        if behavior == "create":
            if existing:
                sys.exit(f"{directory}: ConfigMap {metadata['name']} exists already")
            docs.append(configmap)
        elif behavior in ("replace", "merge"):
            if not existing:
                sys.exit(f"{directory}: no ConfigMap {metadata['name']} to {behavior}")
            if behavior == "merge":
                configmap = strategic_merge(docs[existing[0]], configmap)
            docs[existing[0]] = configmap
        else:
            fail(f"{directory}: generator behavior {behavior}")

def add_labels(kustomization, docs):
    for entry in kustomization.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            fail("labels on selectors or templates")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(entry.get("pairs", {}))

def repository(image):
    """`image` without its tag or digest (a registry's port is no tag)."""
    name = image.split("@")[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name

def set_images(kustomization, docs):
    for image in kustomization.get("images", []):
        unknown = sorted(set(image) - {"name", "newName", "newTag"})
        if unknown:
            fail(f"image fields {unknown}")
        for doc in docs:
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("initContainers", []) + pod.get("containers", []):
                if repository(container["image"]) != image["name"]:
                    continue
                container["image"] = image.get("newName", image["name"])
                if "newTag" in image:
                    container["image"] += ":" + str(image["newTag"])

def read_kustomization(directory, docs=None, kind="Kustomization"):
    """Renders `directory` the way kustomize does (resources, generators, components, then
    patches, labels and images), onto `docs` when it is a Component."""
    kustomization = load_yaml(os.path.join(directory, "kustomization.yaml"))[0]
    if kustomization.get("kind", "Kustomization") != kind:
        sys.exit(f"{directory}: a {kustomization.get('kind')} where a {kind} belongs")
    unknown = sorted(set(kustomization) - FALLBACK_FIELDS)
    if unknown:
        fail(f"{directory}/kustomization.yaml uses {unknown}")
    docs = [] if docs is None else docs
    for entry in kustomization.get("resources", []):
        path = os.path.join(directory, entry)
        docs += read_kustomization(path) if os.path.isdir(path) else load_yaml(path)
    generate(directory, kustomization, docs)
    for component in kustomization.get("components", []):
        docs = read_kustomization(os.path.join(directory, component), docs, "Component")
    apply_patches(directory, kustomization, docs)
    add_labels(kustomization, docs)
    set_images(kustomization, docs)
    return docs

if sys.argv[1] == "--stdin":
    docs = [doc for doc in yaml.safe_load_all(sys.stdin) if doc]
else:
    docs = read_kustomization(sys.argv[1])

versions = ["1.29.0", latest_version()]
errors = []
for doc in docs:
    # Custom resources: tests/deploy.rs checks the fields their operator requires.
    if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        continue
    name = f'{doc.get("kind")}/{doc.get("metadata", {}).get("name")}'
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.absolute_path)
            errors.append(f"{name} (Kubernetes {version}) at {where or '<root>'}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{name}: {e.message}")
print(json.dumps({"docs": docs, "errors": errors, "versions": versions}))
"#;

/// One kustomization under `deploy/kubernetes`, rendered.
struct Variant {
    /// Directory name, e.g. `sidecar`.
    name: String,
    /// Every rendered resource, as JSON.
    docs: Vec<Value>,
    /// Schema violations reported by kubernetes-validate.
    schema_errors: Vec<String>,
    /// The Kubernetes versions validated against.
    versions: Vec<String>,
}

impl Variant {
    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |doc| doc["kind"] == kind)
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs
            .iter()
            .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
    }

    /// The pod templates of the variant's workloads, with the workload's name.
    fn pod_templates(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.docs
            .iter()
            .filter(|doc| ["Deployment", "StatefulSet", "DaemonSet"].contains(&kind(doc)))
            .map(|doc| (name(doc), &doc["spec"]["template"]))
    }
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

/// A container's name.
fn name_of(container: &Value) -> &str {
    container["name"].as_str().unwrap_or("")
}

/// The kustomizations the tests render: every directory under `deploy/kubernetes` with a
/// `kustomization.yaml`, and a Deployment of someone's own with the sidecar Component added.
fn kustomization_dirs() -> Vec<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("deploy/kubernetes");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("read {}: {e}", root.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.join("kustomization.yaml").is_file())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no kustomization under {}",
        root.display()
    );
    dirs.push(manifest.join(FIXTURE));
    dirs
}

/// A kustomization of a user's own (two Deployments, one opted in) with the sidecar Component.
const FIXTURE: &str = "tests/fixtures/sidecar-component";

/// Every variant, rendered once for all the tests in this file.
fn variants() -> &'static [Variant] {
    static VARIANTS: OnceLock<Vec<Variant>> = OnceLock::new();
    VARIANTS.get_or_init(|| kustomization_dirs().iter().map(|dir| render(dir)).collect())
}

/// The variant rendered from `dir`'s kustomization (its directory name).
fn variant(name: &str) -> &'static Variant {
    variants()
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no variant {name}"))
}

/// `dir` rendered by kustomize when it is installed, else by the fallback in `VALIDATE_PY`.
fn render(dir: &Path) -> Variant {
    validate(dir, kustomize(dir))
}

/// Validates `rendered` (kustomize's output), or the fallback's rendering of `dir` when `None`.
fn validate(dir: &Path, rendered: Option<Vec<u8>>) -> Variant {
    let mut validate = Command::new("python3");
    validate
        .env("PYTHONPATH", python_path())
        .arg("-c")
        .arg(VALIDATE_PY);
    let output = match rendered {
        Some(yaml) => run_with_stdin(validate.arg("--stdin"), &yaml),
        None => validate
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("run python3: {e}")),
    };
    assert!(
        output.status.success(),
        "reading the manifests of {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut report: Value = serde_json::from_slice(&output.stdout).expect("validator output");
    let strings = |value: &mut Value| -> Vec<String> {
        serde_json::from_value(value.take()).expect("a list of strings")
    };
    Variant {
        name: dir.file_name().unwrap().to_string_lossy().into_owned(),
        schema_errors: strings(&mut report["errors"]),
        versions: strings(&mut report["versions"]),
        docs: serde_json::from_value(report["docs"].take()).expect("documents"),
    }
}

/// The kustomization rendered by `kubectl kustomize` or `kustomize build`; `None` when neither
/// is installed.
fn kustomize(dir: &Path) -> Option<Vec<u8>> {
    for (program, subcommand) in [("kubectl", "kustomize"), ("kustomize", "build")] {
        match Command::new(program).arg(subcommand).arg(dir).output() {
            Ok(output) => {
                assert!(
                    output.status.success(),
                    "{program} {subcommand} {} failed:\n{}",
                    dir.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
                return Some(output.stdout);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("run {program}: {e}"),
        }
    }
    None
}

fn run_with_stdin(command: &mut Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run python3: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    // Written from a thread: a large input could otherwise fill the pipe while the child waits
    // for us to read its output.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("wait for python3");
    writer.join().expect("writer thread").expect("write stdin");
    output
}

/// The `PYTHONPATH` under which `kubernetes_validate` imports: empty when it is installed
/// already, else a cache under `target/` that is filled with pip on first use.
fn python_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let imports = |path: &str| {
            Command::new("python3")
                .env("PYTHONPATH", path)
                .args(["-c", "import kubernetes_validate, yaml"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or_else(|e| panic!("tests/deploy.rs needs python3: {e}"))
        };
        if imports("") {
            return String::new();
        }
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-python");
        let cache_str = cache.to_string_lossy().into_owned();
        if imports(&cache_str) {
            return cache_str;
        }
        // Installed beside the cache and renamed into place, so that a run interrupted halfway
        // (or a concurrent one) never leaves a half-filled cache behind.
        let staging = cache.with_file_name(format!("deploy-python.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let pip = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--target")
            .arg(&staging)
            .arg("kubernetes-validate")
            .output()
            .unwrap_or_else(|e| panic!("tests/deploy.rs needs python3: {e}"));
        if !pip.status.success() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        assert!(
            pip.status.success(),
            "tests/deploy.rs validates the manifests with the Python package kubernetes-validate, \
             which is not importable, and `python3 -m pip install --target {} \
             kubernetes-validate` failed (is pip installed, is PyPI reachable?):\n{}",
            staging.display(),
            String::from_utf8_lossy(&pip.stderr)
        );
        let _ = std::fs::remove_dir_all(&cache);
        if std::fs::rename(&staging, &cache).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        assert!(
            imports(&cache_str),
            "kubernetes-validate installed into {cache_str} but does not import"
        );
        cache_str
    })
}

/// What `check-config` made of a ConfigMap's TOML: the effective configuration.
fn effective_config(variant: &Variant, configmap: &str) -> toml::Table {
    let key = format!("{}/{configmap}", variant.name);
    let doc = variant
        .named("ConfigMap", configmap)
        .unwrap_or_else(|| panic!("{}: no ConfigMap {configmap}", variant.name));
    let text = doc["data"][CONFIG_KEY]
        .as_str()
        .unwrap_or_else(|| panic!("{key}: no data key {CONFIG_KEY}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(CONFIG_KEY);
    std::fs::write(&file, text).expect("write config");
    let mut check = Command::new(BIN);
    // Only the file counts: overrides in the environment running the tests would change it.
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("ACCOUNT_GATE__") {
            check.env_remove(var);
        }
    }
    let output = check
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run account-gate check-config");
    assert!(
        output.status.success(),
        "account-gate check-config rejects the TOML of ConfigMap {key}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    stdout.parse().expect("check-config prints TOML")
}

fn duration(config: &toml::Table, section: &str, key: &str) -> Duration {
    let text = config[section][key].as_str().expect("a duration string");
    humantime::parse_duration(text).expect("a humantime duration")
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("host:port")
}

/// Whether `selector` (matchLabels only; the manifests use nothing else) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "matchExpressions: teach tests/deploy.rs to evaluate them"
    );
    let wanted = selector["matchLabels"].as_object();
    wanted.is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
}

/// Every container of a pod spec, init containers first.
fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|field| pod[field].as_array())
        .flatten()
}

/// The container port `port` (a name or a number) refers to.
fn container_port(container: &Value, port: &Value) -> Option<u64> {
    if let Some(number) = port.as_u64() {
        return Some(number);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    for variant in variants() {
        assert!(!variant.docs.is_empty(), "{}: no manifests", variant.name);
        assert!(
            variant.schema_errors.is_empty(),
            "{}: invalid against the Kubernetes {:?} schemas:\n{}",
            variant.name,
            variant.versions,
            variant.schema_errors.join("\n")
        );
    }
}

#[test]
fn every_configmap_toml_passes_check_config() {
    let mut seen = 0;
    for variant in variants() {
        // Dashboards for Grafana: the_grafana_dashboard_configmap_is_the_dashboard.
        for configmap in variant
            .of_kind("ConfigMap")
            .filter(|c| c["metadata"]["labels"][DASHBOARD_LABEL].is_null())
        {
            assert!(
                configmap["data"][CONFIG_KEY].is_string(),
                "{}: ConfigMap {} has no key {CONFIG_KEY}",
                variant.name,
                name(configmap)
            );
            effective_config(variant, name(configmap));
            seen += 1;
        }
    }
    assert!(seen > 0, "no ConfigMap holds a gateway configuration");
}

#[test]
fn prometheus_monitors_name_a_port_of_what_they_select() {
    // Every variant that runs a workload runs the gateway, and something must scrape it.
    for variant in variants()
        .iter()
        .filter(|v| v.pod_templates().next().is_some())
    {
        let monitors: Vec<&Value> = variant
            .docs
            .iter()
            .filter(|doc| {
                doc["apiVersion"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("monitoring.")
            })
            .collect();
        assert!(
            !monitors.is_empty(),
            "{}: nothing scrapes the gateway",
            variant.name
        );
        for monitor in monitors {
            let what = format!("{}: {} {}", variant.name, kind(monitor), name(monitor));
            assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1", "{what}");
            assert!(
                !name(monitor).is_empty(),
                "{what}: metadata.name is required"
            );
            let selector = &monitor["spec"]["selector"];
            assert!(selector.is_object(), "{what}: spec.selector is required");
            let field = match kind(monitor) {
                // `port` names a container port of a selected pod.
                "PodMonitor" => "podMetricsEndpoints",
                // `port` names a port of a selected Service.
                "ServiceMonitor" => "endpoints",
                other => panic!("{what}: no check for kind {other}; add one"),
            };
            let endpoints = monitor["spec"][field].as_array();
            assert!(
                endpoints.is_some_and(|e| !e.is_empty()),
                "{what}: spec.{field} is empty"
            );
            for endpoint in endpoints.into_iter().flatten() {
                let port = endpoint["port"].as_str();
                assert!(port.is_some(), "{what}: every endpoint needs a named port");
                let found = match kind(monitor) {
                    "PodMonitor" => variant
                        .pod_templates()
                        .filter(|(_, t)| selects(selector, &t["metadata"]["labels"]))
                        .flat_map(|(_, t)| containers(&t["spec"]).collect::<Vec<_>>())
                        .any(|c| container_port(c, &endpoint["port"]).is_some()),
                    _ => variant
                        .of_kind("Service")
                        .filter(|s| selects(selector, &s["metadata"]["labels"]))
                        .flat_map(|s| s["spec"]["ports"].as_array().into_iter().flatten())
                        .any(|p| p["name"] == endpoint["port"]),
                };
                assert!(found, "{what}: nothing it selects has a port {port:?}");
            }
        }
    }
}

#[test]
fn services_autoscalers_and_budgets_point_at_a_workload() {
    for variant in variants() {
        let templates: Vec<(&str, &Value)> = variant.pod_templates().collect();
        let selected = |selector: &Value| {
            templates
                .iter()
                .filter(|(_, t)| selects(selector, &t["metadata"]["labels"]))
                .map(|(_, t)| *t)
                .collect::<Vec<_>>()
        };
        for service in variant.of_kind("Service") {
            let what = format!("{}: Service {}", variant.name, name(service));
            let pods = selected(&serde_json::json!({ "matchLabels": service["spec"]["selector"] }));
            assert!(!pods.is_empty(), "{what} selects no pods");
            for port in service["spec"]["ports"].as_array().into_iter().flatten() {
                let target = &port["targetPort"];
                let resolves = pods
                    .iter()
                    .any(|t| containers(&t["spec"]).any(|c| container_port(c, target).is_some()));
                assert!(resolves, "{what}: targetPort {target} is no container port");
            }
        }
        for pdb in variant.of_kind("PodDisruptionBudget") {
            assert!(
                !selected(&pdb["spec"]["selector"]).is_empty(),
                "{}: PodDisruptionBudget {} selects no pods",
                variant.name,
                name(pdb)
            );
        }
        for hpa in variant.of_kind("HorizontalPodAutoscaler") {
            let target = &hpa["spec"]["scaleTargetRef"];
            let what = format!("{}: HorizontalPodAutoscaler {}", variant.name, name(hpa));
            let workload = target["kind"]
                .as_str()
                .and_then(|k| variant.named(k, target["name"].as_str().unwrap_or("")));
            let workload = workload.unwrap_or_else(|| panic!("{what}: no {target}"));
            // A replica count in the manifest would be reset by every `kubectl apply`,
            // fighting the autoscaler.
            assert!(
                workload["spec"]["replicas"].is_null(),
                "{what}: {} sets spec.replicas",
                name(workload)
            );
        }
    }
}

#[test]
fn every_container_is_locked_down() {
    for variant in variants() {
        for (workload, template) in variant.pod_templates() {
            let pod = &template["spec"];
            let pod_security = &pod["securityContext"];
            assert_eq!(
                pod["automountServiceAccountToken"], false,
                "{}: {workload} needs no Kubernetes API token",
                variant.name
            );
            for container in containers(pod) {
                let what = format!("{}: {workload}/{}", variant.name, name_of(container));
                let security = &container["securityContext"];
                // A container's setting wins over the pod's.
                let effective = |field: &str| match &security[field] {
                    Value::Null => &pod_security[field],
                    value => value,
                };
                assert_eq!(*effective("runAsNonRoot"), true, "{what}: runAsNonRoot");
                assert_eq!(
                    effective("seccompProfile")["type"],
                    "RuntimeDefault",
                    "{what}: seccompProfile"
                );
                assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
                let drops = security["capabilities"]["drop"].as_array();
                assert!(
                    drops.is_some_and(|d| d.iter().any(|c| c == "ALL")),
                    "{what}: capabilities must drop ALL"
                );
            }
        }
    }
}

#[test]
fn gateway_containers_have_probes_resources_config_and_time_to_drain() {
    let mut seen = 0;
    for variant in variants() {
        for (workload, template) in variant.pod_templates() {
            let pod = &template["spec"];
            let Some(gateway) = containers(pod).find(|c| c["name"] == GATEWAY) else {
                continue;
            };
            seen += 1;
            let what = format!("{}: {workload}/{GATEWAY}", variant.name);
            let is_init = pod["initContainers"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == GATEWAY));
            if is_init {
                // Without it an init container would have to exit before the pod starts.
                assert_eq!(gateway["restartPolicy"], "Always", "{what}: native sidecar");
            }

            // The configuration: a whole-directory mount (a subPath never sees updates) of a
            // ConfigMap of this variant.
            let mount = gateway["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["mountPath"] == "/etc/account-gate")
                .unwrap_or_else(|| panic!("{what}: nothing mounted at /etc/account-gate"));
            assert!(mount["subPath"].is_null(), "{what}: subPath config mount");
            let volume = pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("{what}: no volume {}", mount["name"]));
            let configmap = volume["configMap"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: the config volume is no ConfigMap"));
            let config = effective_config(variant, configmap);

            // Probes on the admin port, which must be reachable from the kubelet.
            let admin_listen = config["server"]["admin_listen"]
                .as_str()
                .expect("admin_listen");
            assert!(
                !admin_listen.starts_with("127.") && !admin_listen.starts_with("[::1]"),
                "{what}: admin_listen {admin_listen} is unreachable for probes and Prometheus"
            );
            let admin_port = u64::from(port_of(admin_listen));
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &gateway[probe]["httpGet"];
                assert_eq!(get["path"], path, "{what}: {probe}");
                assert_eq!(
                    container_port(gateway, &get["port"]),
                    Some(admin_port),
                    "{what}: {probe} must hit the admin port"
                );
            }

            let resources = &gateway["resources"];
            for (section, resource) in [
                ("requests", "cpu"),
                ("requests", "memory"),
                ("limits", "memory"),
            ] {
                assert!(
                    resources[section][resource].is_string(),
                    "{what}: resources.{section}.{resource} is not set"
                );
            }

            // The pod must outlive the gateway's drain, or the kubelet's SIGKILL cuts requests.
            let drain = duration(&config, "server", "shutdown_delay")
                + duration(&config, "server", "shutdown_grace");
            // 30 s is the Kubernetes default.
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            assert!(
                Duration::from_secs(grace) > drain,
                "{what}: terminationGracePeriodSeconds {grace} is not above shutdown_delay + \
                 shutdown_grace ({drain:?})"
            );
        }
    }
    assert!(seen > 0, "no workload runs a container named {GATEWAY}");
}

#[test]
fn the_shared_gateway_serves_tls_from_a_secret_and_admits_each_port_to_its_clients_only() {
    let variant = variant("shared");
    let deployment = variant
        .named("Deployment", GATEWAY)
        .expect("the gateway Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let gateway = containers(pod)
        .find(|c| c["name"] == GATEWAY)
        .expect("gateway container");
    let config = effective_config(variant, GATEWAY);

    // Certificate and key from a mounted Secret (a whole directory, so renewals arrive).
    let tls = config["server"]["tls"]
        .as_table()
        .expect("[server.tls] is set: passwords and tokens cross the pod network");
    for key in ["cert_file", "key_file"] {
        let file = tls[key].as_str().expect(key);
        let mount = gateway["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                m["mountPath"]
                    .as_str()
                    .is_some_and(|p| file.starts_with(&format!("{p}/")))
            })
            .unwrap_or_else(|| panic!("server.tls.{key} {file} is on no mounted volume"));
        assert!(
            mount["subPath"].is_null(),
            "{key}: a subPath mount never sees renewals"
        );
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .expect("volume");
        assert!(
            volume["secret"]["secretName"].is_string(),
            "{key}: not from a Secret"
        );
    }
    let service = variant.named("Service", GATEWAY).expect("Service");
    let data = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"] == 8080)
        .expect("data port");
    assert_eq!(data["appProtocol"], "https");

    // A NetworkPolicy over the gateway's pods: every port admitted from named clients only, and
    // the data port and the admin port from different ones.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let policy = variant
        .of_kind("NetworkPolicy")
        .find(|p| selects(&p["spec"]["podSelector"], labels))
        .expect("a NetworkPolicy selecting the gateway pods");
    let rules = policy["spec"]["ingress"].as_array().expect("ingress rules");
    let mut sources = Vec::new();
    for port in gateway["ports"].as_array().expect("ports") {
        let number = port["containerPort"].as_u64().expect("containerPort");
        let admitting: Vec<&Value> = rules
            .iter()
            .filter(|rule| {
                rule["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| container_port(gateway, &p["port"]) == Some(number))
            })
            .collect();
        assert!(!admitting.is_empty(), "port {number}: no rule admits it");
        for rule in &admitting {
            let from = rule["from"].as_array().map_or(0, Vec::len);
            assert!(from > 0, "port {number} is open to every source");
        }
        sources.push(admitting[0]["from"].clone());
    }
    assert_eq!(sources.len(), 2);
    assert_ne!(
        sources[0], sources[1],
        "data and admin ports admit the same clients"
    );
}

/// `docs` in an order-free form: sorted by kind and name, and every list that kustomize merges by
/// a key (containers, volumes, mounts, ...) sorted by that key.
fn normalized(docs: &[Value]) -> Vec<Value> {
    fn sort(value: &Value, field: &str) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(key, value)| (key.clone(), sort(value, key)))
                    .collect(),
            ),
            Value::Array(items) => {
                let mut items: Vec<Value> = items.iter().map(|item| sort(item, "")).collect();
                let key = match field {
                    "initContainers" | "containers" | "volumes" | "env" => Some("name"),
                    "volumeMounts" => Some("mountPath"),
                    "ports" => Some("containerPort"),
                    _ => None,
                };
                if let Some(key) = key {
                    items.sort_by_key(|item| item[key].to_string());
                }
                Value::Array(items)
            }
            other => other.clone(),
        }
    }
    let mut docs: Vec<Value> = docs.iter().map(|doc| sort(doc, "")).collect();
    docs.sort_by_key(|doc| (kind(doc).to_owned(), name(doc).to_owned()));
    docs
}

#[test]
fn the_fallback_renderer_agrees_with_kustomize() {
    for dir in kustomization_dirs() {
        let Some(rendered) = kustomize(&dir) else {
            let why = "neither kubectl nor kustomize is installed, so the fallback renderer \
                       that rendered every kustomization is unchecked";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI: {why}");
            eprintln!("SKIPPED the_fallback_renderer_agrees_with_kustomize: {why}");
            return;
        };
        let kustomized = validate(&dir, Some(rendered));
        let fallback = validate(&dir, None);
        let (expected, actual) = (normalized(&kustomized.docs), normalized(&fallback.docs));
        assert_eq!(
            expected.len(),
            actual.len(),
            "{}: kustomize renders {:?}, the fallback {:?}",
            dir.display(),
            expected
                .iter()
                .map(|d| [kind(d), name(d)])
                .collect::<Vec<_>>(),
            actual
                .iter()
                .map(|d| [kind(d), name(d)])
                .collect::<Vec<_>>()
        );
        for (want, got) in expected.iter().zip(&actual) {
            assert!(
                want == got,
                "{}: {} {} rendered by the fallback differs from kustomize's:\nkustomize: {}\n\
                 fallback:  {}",
                dir.display(),
                kind(want),
                name(want),
                serde_json::to_string_pretty(want).unwrap(),
                serde_json::to_string_pretty(got).unwrap()
            );
        }
    }
}

#[test]
fn the_sidecar_component_adds_the_gateway_to_a_deployment_of_ones_own() {
    let variant = variant("sidecar-component");
    assert!(
        variant.schema_errors.is_empty(),
        "{}",
        variant.schema_errors.join("\n")
    );
    let source_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let text = std::fs::read_to_string(source_dir.join("deployments.yaml")).expect("fixture");
    let sources = yaml_docs(&text);
    let source = |name: &str| {
        sources
            .iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("fixture Deployment {name}"))
    };

    // The labelled Deployment: the gateway added, everything of its own kept.
    let api = variant.named("Deployment", "shop-api").expect("shop-api");
    let (before, after) = (&source("shop-api")["spec"], &api["spec"]);
    assert_eq!(
        after["selector"], before["selector"],
        "the selector is immutable"
    );
    let pod = &after["template"]["spec"];
    let names = |field: &str| -> Vec<&str> {
        let mut names: Vec<&str> = pod[field]
            .as_array()
            .into_iter()
            .flatten()
            .map(name_of)
            .collect();
        names.sort_unstable();
        names
    };
    assert_eq!(names("initContainers"), ["account-gate", "migrate"]);
    assert_eq!(pod["containers"], before["template"]["spec"]["containers"]);
    assert_eq!(
        names("volumes"),
        ["account-gate-config", "account-gate-secrets", "cache"]
    );
    for field in [
        "securityContext",
        "automountServiceAccountToken",
        "terminationGracePeriodSeconds",
    ] {
        assert_eq!(
            pod[field], before["template"]["spec"][field],
            "the pod's {field} is the Deployment's own"
        );
    }
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    assert_eq!(volume("account-gate-config")["configMap"]["name"], GATEWAY);
    assert_eq!(
        volume("account-gate-secrets")["secret"]["secretName"],
        GATEWAY
    );
    let gateway = containers(pod)
        .find(|c| c["name"] == GATEWAY)
        .expect("gateway");
    assert_eq!(gateway["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(
        api["spec"]["template"]["metadata"]["labels"]["account-gate.io/sidecar"],
        "true"
    );

    // The Deployment without the label is untouched.
    let worker = variant.named("Deployment", "shop-worker").expect("worker");
    assert_eq!(worker, source("shop-worker"));

    // The configuration is the user's (its replacing Component), and it is valid.
    let own = std::fs::read_to_string(source_dir.join("gateway-config/account-gate.toml"))
        .expect("fixture config");
    let configmap = variant.named("ConfigMap", GATEWAY).expect("ConfigMap");
    assert_eq!(configmap["data"][CONFIG_KEY], own.as_str());
    assert_eq!(variant.of_kind("ConfigMap").count(), 1);
    effective_config(variant, GATEWAY);

    // The PodMonitor scrapes the labelled pods only.
    let monitor = variant.of_kind("PodMonitor").next().expect("PodMonitor");
    let selector = &monitor["spec"]["selector"];
    assert!(selects(
        selector,
        &api["spec"]["template"]["metadata"]["labels"]
    ));
    assert!(!selects(
        selector,
        &worker["spec"]["template"]["metadata"]["labels"]
    ));
    // The probes, resources, drain time and lockdown of the gateway are checked with every
    // variant's: gateway_containers_have_probes_resources_config_and_time_to_drain,
    // every_container_is_locked_down.
}

/// The YAML documents of `text`, as JSON values.
fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

#[test]
fn the_grafana_dashboard_configmap_is_the_dashboard() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(manifest.join("deploy/grafana/account-gate.json"))
        .expect("the dashboard");
    let copy =
        std::fs::read_to_string(manifest.join("deploy/kubernetes/grafana/account-gate.json"))
            .expect("the copy kustomize reads");
    assert!(
        copy == source,
        "deploy/kubernetes/grafana/account-gate.json differs from the dashboard; run\n  \
         cp deploy/grafana/account-gate.json deploy/kubernetes/grafana/account-gate.json"
    );
    let variant = variant("grafana");
    let dashboards: Vec<&Value> = variant
        .of_kind("ConfigMap")
        .filter(|c| c["metadata"]["labels"][DASHBOARD_LABEL] == "1")
        .collect();
    assert_eq!(
        dashboards.len(),
        1,
        "one dashboard ConfigMap labelled {DASHBOARD_LABEL}: \"1\""
    );
    let data = dashboards[0]["data"].as_object().expect("data");
    assert_eq!(data.len(), 1);
    assert_eq!(data["account-gate.json"], source.as_str());
    let dashboard: Value = serde_json::from_str(&source).expect("the dashboard is JSON");
    assert!(dashboard["uid"].is_string(), "a dashboard with a uid");
}
