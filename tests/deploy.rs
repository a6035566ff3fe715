//! The deployment files agree with each other and with the function: every YAML file
//! parses, names the images the Dockerfiles and the Makefile build, probes the paths the
//! server answers, and keeps the function's timeouts under the gateway's. The Swarm stack
//! goes through `docker stack config` (the Docker client needs no engine for it).

use std::collections::BTreeMap;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use crate::util::root;

/// The gateway gives up on a function after this (faas-netes chart `upstreamTimeout`,
/// faasd's gateway: 60 s): the function must time out first and answer 504 itself.
const GATEWAY_UPSTREAM_SECONDS: f64 = 60.0;

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|error| panic!("cannot read {relative}: {error}"))
}

fn yaml_documents(relative: &str, text: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(text).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

fn text<'a>(yaml: &'a Yaml, what: &str) -> &'a str {
    match yaml {
        Yaml::String(text) => text,
        other => panic!("{what}: expected a string, found {other:?}"),
    }
}

fn number(yaml: &Yaml, what: &str) -> i64 {
    match yaml {
        Yaml::Integer(value) => *value,
        Yaml::String(text) => text.parse().unwrap_or_else(|_| panic!("{what}: {text:?}")),
        other => panic!("{what}: expected a number, found {other:?}"),
    }
}

fn seconds(yaml: &Yaml, what: &str) -> f64 {
    edge_classify::server::settings::parse_duration(text(yaml, what))
        .unwrap_or_else(|error| panic!("{what}: {error}"))
        .as_secs_f64()
}

/// `IMAGE ?= ...` from the Makefile: the repository every deployment file pulls.
fn image_repository() -> String {
    let makefile = read("Makefile");
    let line = makefile
        .lines()
        .find_map(|line| line.strip_prefix("IMAGE ?= "))
        .expect("the Makefile sets IMAGE");
    line.trim().to_string()
}

fn crate_version() -> String {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    manifest["package"]["version"].as_str().unwrap().to_string()
}

/// The Dockerfile instructions (continuation lines joined), comments dropped.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn the_dockerfiles_differ_only_in_their_root_filesystem() {
    let multi_arch = instructions(&read("Dockerfile"));
    let expected_copy = "COPY linux-${TARGETARCH}${TARGETVARIANT}/ /";
    assert!(multi_arch.iter().any(|line| line == expected_copy));
    for (file, staged) in [
        ("Dockerfile.arm64", "linux-arm64"),
        ("Dockerfile.arm32v7", "linux-armv7"),
    ] {
        let fixed = instructions(&read(file));
        let generic: Vec<&String> = multi_arch
            .iter()
            .filter(|line| !line.starts_with("ARG TARGET") && *line != expected_copy)
            .collect();
        let own: Vec<&String> = fixed
            .iter()
            .filter(|line| !line.starts_with("COPY "))
            .collect();
        assert_eq!(own, generic, "{file} drifted from Dockerfile");
        assert!(
            fixed.contains(&format!("COPY {staged}/ /")),
            "{file} copies {staged}"
        );
    }
    // What a scratch image must say for itself.
    for expected in [
        "FROM scratch",
        "USER 10001:10001",
        "EXPOSE 8080",
        "WORKDIR /function",
        "ENTRYPOINT [\"/function/classify\"]",
        "CMD [\"serve\"]",
    ] {
        assert!(
            multi_arch.iter().any(|line| line == expected),
            "Dockerfile lacks {expected}"
        );
    }
    assert!(
        multi_arch.contains(&format!("ARG VERSION={}", crate_version())),
        "the version label defaults to the crate's version"
    );
    let health = multi_arch
        .iter()
        .find(|line| line.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    assert!(health.ends_with("CMD [\"/function/classify\", \"healthcheck\"]"));
    let env = multi_arch
        .iter()
        .find(|line| line.starts_with("ENV "))
        .unwrap();
    assert!(
        env.contains("port=8080"),
        "the port variable matches EXPOSE"
    );
}

#[test]
fn the_makefile_tags_an_image_per_dockerfile() {
    let makefile = read("Makefile");
    let assigned = |name: &str| -> String {
        makefile
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} := ")))
            .unwrap_or_else(|| panic!("the Makefile sets no {name}"))
            .trim()
            .to_string()
    };
    for (arch, dockerfile, platform) in [
        ("amd64", "Dockerfile", "linux/amd64"),
        ("arm64", "Dockerfile.arm64", "linux/arm64"),
        ("armv7", "Dockerfile.arm32v7", "linux/arm/v7"),
    ] {
        assert_eq!(assigned(&format!("DOCKERFILE_{arch}")), dockerfile);
        assert_eq!(assigned(&format!("PLATFORM_{arch}")), platform);
        assert!(root().join(dockerfile).is_file());
    }
    assert!(makefile.contains("-t $(IMAGE):$(VERSION)-$$arch dist/image"));
}

#[test]
fn the_faas_cli_stack_deploys_both_functions_within_the_gateway_timeouts() {
    let docs = yaml_documents("stack.yml", &read("stack.yml"));
    let stack = &docs[0];
    assert_eq!(text(&stack["provider"]["name"], "provider"), "openfaas");
    let functions = stack["functions"].as_hash().expect("functions");
    let names: Vec<&str> = functions.keys().map(|k| text(k, "name")).collect();
    assert_eq!(names, ["resnet50", "catsdogs"]);
    let manifest =
        edge_classify::manifest::Manifest::load(&root().join("weights/models.toml")).unwrap();
    for (name, function) in functions {
        let name = text(name, "name");
        assert_eq!(text(&function["lang"], name), "dockerfile");
        let handler = text(&function["handler"], name);
        assert_eq!(handler, "./dist/image", "make stage's build context");
        let image = text(&function["image"], name);
        assert_eq!(
            image,
            format!(
                "${{IMAGE:-{}}}:${{VERSION:-{}}}",
                image_repository(),
                crate_version()
            )
        );
        let env = &function["environment"];
        for model in text(&env["models"], name).split(',') {
            assert!(
                manifest.model(model).is_ok(),
                "{name} serves unknown {model}"
            );
        }
        for timeout in ["read_timeout", "write_timeout", "exec_timeout"] {
            let value = seconds(&env[timeout], timeout);
            assert!(
                value > 0.0 && value < GATEWAY_UPSTREAM_SECONDS,
                "{name}: {timeout} {value}"
            );
        }
        let labels = &function["labels"];
        let min = number(&labels["com.openfaas.scale.min"], "scale.min");
        let max = number(&labels["com.openfaas.scale.max"], "scale.max");
        assert!(1 <= min && min <= max, "{name}: scale {min}..{max}");
        let request = mebibytes(text(&function["requests"]["memory"], name));
        let limit = mebibytes(text(&function["limits"]["memory"], name));
        assert!(request <= limit, "{name}: memory request over its limit");
        let constraints = function["constraints"].as_vec().expect("constraints");
        assert!(constraints
            .iter()
            .any(|c| text(c, name).starts_with("kubernetes.io/arch=")));
        assert_eq!(
            text(
                &function["annotations"]["com.openfaas.health.http.path"],
                name
            ),
            "/_/health"
        );
    }
}

fn mebibytes(quantity: &str) -> u64 {
    let (number, unit) = quantity.split_at(quantity.trim_end_matches(char::is_alphabetic).len());
    let value: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("memory {quantity:?}"));
    match unit {
        "Mi" | "M" => value,
        "Gi" | "G" => value * 1024,
        _ => panic!("memory unit of {quantity:?}"),
    }
}

/// `docker stack config` resolves the anchors and variables as `docker stack deploy` will.
fn resolved_swarm_stack(replicas: &[(&str, &str)]) -> Yaml {
    let output = Command::new("docker")
        .args(["stack", "config", "-c", "deploy/swarm/docker-stack.yml"])
        .current_dir(root())
        .envs(replicas.iter().copied())
        .output()
        .expect("the docker client runs (Debian: docker.io or docker-ce-cli)");
    assert!(
        output.status.success(),
        "docker stack config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    yaml_documents("docker stack config", &text).remove(0)
}

#[test]
fn the_swarm_stack_places_each_architecture_on_its_nodes() {
    let stack = resolved_swarm_stack(&[
        ("ARM64_REPLICAS", "3"),
        ("ARMV7_REPLICAS", "2"),
        ("AMD64_REPLICAS", "0"),
    ]);
    let services = stack["services"].as_hash().expect("services");
    let expected = BTreeMap::from([
        ("classify-amd64", ("x86_64", "amd64", 0)),
        ("classify-arm64", ("aarch64", "arm64", 3)),
        ("classify-armv7", ("armv7l", "armv7", 2)),
    ]);
    let names: Vec<&str> = services.keys().map(|k| text(k, "service")).collect();
    assert_eq!(names, expected.keys().copied().collect::<Vec<_>>());
    for (name, service) in services {
        let name = text(name, "service");
        let (node_arch, tag, replicas) = expected[name];
        assert_eq!(
            text(&service["image"], name),
            format!("{}:{}-{tag}", image_repository(), crate_version())
        );
        let deploy = &service["deploy"];
        assert_eq!(number(&deploy["replicas"], name), replicas);
        let constraints: Vec<&str> = deploy["placement"]["constraints"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|c| text(c, name))
            .collect();
        assert!(
            constraints.contains(&format!("node.platform.arch == {node_arch}").as_str()),
            "{name}: {constraints:?}"
        );
        assert_eq!(
            text(&deploy["update_config"]["failure_action"], name),
            "rollback"
        );
        assert_eq!(
            text(&deploy["restart_policy"]["condition"], name),
            "on-failure"
        );
        assert!(
            !deploy["resources"]["limits"]["memory"].is_badvalue(),
            "{name}: memory limit"
        );
        let test: Vec<&str> = service["healthcheck"]["test"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|t| text(t, name))
            .collect();
        assert_eq!(test, ["CMD", "/function/classify", "healthcheck"]);
        let port = &service["ports"][0];
        assert_eq!(number(&port["target"], name), 8080);
        assert_eq!(text(&port["mode"], name), "host");
        let grace = seconds(&service["stop_grace_period"], name);
        let write = seconds(&service["environment"]["write_timeout"], name);
        assert!(grace > write, "{name}: SIGKILL before the drain ends");
    }
}

#[test]
fn deploy_stack_detects_the_architecture_and_resolves_the_stack() {
    let script = root().join("deploy/swarm/deploy_stack.sh");
    let output = Command::new(&script).arg("--dry-run").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Manager is"), "{stderr}");
    let resolved = yaml_documents("dry run", &String::from_utf8_lossy(&output.stdout));
    assert!(resolved[0]["services"]["classify-arm64"]["image"]
        .as_str()
        .is_some());
}

#[test]
fn the_kubernetes_deployment_probes_the_function() {
    let relative = "deploy/kubernetes/classify.yaml";
    let docs = yaml_documents(relative, &read(relative));
    let kinds: Vec<&str> = docs.iter().map(|d| text(&d["kind"], "kind")).collect();
    assert_eq!(kinds, ["Deployment", "Service"]);
    let (deployment, service) = (&docs[0], &docs[1]);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        text(&container["image"], "image"),
        format!("{}:{}", image_repository(), crate_version())
    );
    assert_eq!(
        number(&container["ports"][0]["containerPort"], "port"),
        8080
    );
    assert_eq!(
        text(&container["readinessProbe"]["httpGet"]["path"], "readiness"),
        "/_/ready"
    );
    assert_eq!(
        text(&container["livenessProbe"]["httpGet"]["path"], "liveness"),
        "/_/health"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        let probe = &container[probe];
        assert_eq!(number(&probe["periodSeconds"], "period"), 2);
        assert_eq!(number(&probe["timeoutSeconds"], "timeout"), 1);
    }
    assert_eq!(number(&pod["securityContext"]["runAsUser"], "user"), 10001);
    assert_eq!(
        text(&container["volumeMounts"][0]["mountPath"], "tmp"),
        "/tmp"
    );
    let env: BTreeMap<&str, &str> = container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (text(&e["name"], "env"), text(&e["value"], "env")))
        .collect();
    let write = seconds(&Yaml::String(env["write_timeout"].into()), "write_timeout");
    let grace = number(&pod["terminationGracePeriodSeconds"], "grace") as f64;
    assert!(grace > write, "SIGKILL before the drain ends");
    let selector = &service["spec"]["selector"]["app.kubernetes.io/name"];
    assert_eq!(
        selector,
        &deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    );
    assert_eq!(
        text(&service["spec"]["ports"][0]["targetPort"], "target"),
        "http"
    );
}

#[test]
fn every_yaml_file_of_the_project_parses() {
    let mut found = 0;
    for dir in ["", "deploy/swarm", "deploy/kubernetes"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yml" | "yaml")
            ) {
                let relative = path.strip_prefix(root()).unwrap().display().to_string();
                let docs = yaml_documents(&relative, &read(&relative));
                assert!(!docs.is_empty(), "{relative}");
                found += 1;
            }
        }
    }
    assert_eq!(
        found, 3,
        "stack.yml, the Swarm stack, the Kubernetes manifest"
    );
}
