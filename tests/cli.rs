//! The `classify` binary as a user runs it.

use std::process::Command;

use crate::util::{classify, root, shared, stderr_of, stdout_of};

#[test]
fn predict_prints_one_json_object_per_image() {
    let photos = shared().join("data/photos");
    let tiger = photos.join("tiger.jpg");
    let cup = photos.join("coffee_cup.jpg");
    let output = classify(&[
        "predict",
        "--format",
        "json",
        "--top",
        "3",
        tiger.to_str().unwrap(),
        cup.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let lines: Vec<serde_json::Value> = stdout_of(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["model"], "resnet50");
    assert_eq!(lines[0]["file"], tiger.to_str().unwrap());
    let best = &lines[0]["predictions"][0];
    assert_eq!(
        (
            best["index"].as_u64(),
            best["id"].as_str(),
            best["label"].as_str()
        ),
        (Some(292), Some("n02129604"), Some("tiger"))
    );
    assert!(best["score"].as_f64().unwrap() > 0.9);
    assert_eq!(lines[0]["predictions"].as_array().unwrap().len(), 3);
    assert!(lines[0]["elapsed_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[1]["predictions"][0]["label"], "espresso");
}

#[test]
fn predict_text_is_the_original_services_line() {
    let tiger = shared().join("data/photos/tiger.jpg");
    let output = classify(&[
        "predict",
        "--format",
        "text",
        "--resize",
        "squash-nearest",
        "--top",
        "3",
        tiger.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let line = stdout_of(&output);
    assert!(
        line.starts_with("Predicted: [('n02129604', 'tiger', 0.92"),
        "{line}"
    );
    assert!(line.contains("('n02123159', 'tiger_cat', 0.04"), "{line}");
    assert!(
        line.trim_end().ends_with(")]") && line.contains("'zebra'"),
        "{line}"
    );
}

#[test]
fn a_bad_file_is_reported_and_the_others_still_classified() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not an image").unwrap();
    let missing = dir.path().join("missing.jpg");
    let cup = shared().join("data/photos/coffee_cup.jpg");
    let output = classify(&[
        "predict",
        "--format",
        "json",
        text.to_str().unwrap(),
        cup.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = stdout_of(&output);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("espresso"));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("notes.txt") && stderr.contains("not a JPEG"),
        "{stderr}"
    );
    assert!(stderr.contains("missing.jpg"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let cup = shared().join("data/photos/coffee_cup.jpg");
    for (args, expect) in [
        (
            vec!["predict", "--top", "0", cup.to_str().unwrap()],
            "--top",
        ),
        (
            vec!["predict", "--model", "resnet51", cup.to_str().unwrap()],
            "unknown model \"resnet51\"",
        ),
        (
            vec!["predict", "--resize", "stretch", cup.to_str().unwrap()],
            "stretch",
        ),
        (
            vec![
                "--manifest",
                "/nonexistent/models.toml",
                "predict",
                cup.to_str().unwrap(),
            ],
            "/nonexistent/models.toml",
        ),
    ] {
        let output = classify(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr_of(&output).contains(expect),
            "{args:?}: {}",
            stderr_of(&output)
        );
    }
}

/// `EDGE_KERNELS` forces a level of the kernel table: one this CPU cannot run stops the
/// command before any work, naming the levels it can; `classify bench` says which
/// kernels ran.
#[test]
fn edge_kernels_forces_a_level_or_is_refused() {
    let cup = shared().join("data/photos/coffee_cup.jpg");
    let run = |level: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_classify"))
            .args(args)
            .current_dir(root())
            .env("RUST_LOG", "warn")
            .env("EDGE_KERNELS", level)
            .output()
            .expect("the classify binary runs")
    };
    let refused = run("z80", &["predict", cup.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    let message = stderr_of(&refused);
    assert!(
        message.contains("EDGE_KERNELS=z80") && message.contains("portable"),
        "{message}"
    );
    assert!(stdout_of(&refused).is_empty(), "no work before the refusal");
    let bench = [
        "bench",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--format",
        "json",
    ];
    let output = run("portable", &bench);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let result: serde_json::Value = serde_json::from_str(stdout_of(&output).trim()).unwrap();
    assert_eq!(result["kernel_level"], "portable", "{result}");
    assert_eq!(result["kernels"]["f32"], "gemm-crate", "{result}");
    assert_eq!(result["kernels"]["int8"], "reference", "{result}");
}

#[test]
fn the_health_check_fails_cleanly_without_a_function() {
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = classify(&[
        "--manifest",
        "/nonexistent/models.toml",
        "healthcheck",
        "--port",
        &port.to_string(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains("cannot connect"),
        "{}",
        stderr_of(&output)
    );
    let output = classify(&["healthcheck", "--path", "/etc/passwd"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "only the probes can be asked"
    );
}

/// Output piped into a reader that stops after one line (`classify predict ... | head -1`)
/// ends the command by SIGPIPE, as other Unix tools end, not by a panic.
#[cfg(unix)]
#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let photos: Vec<_> = std::fs::read_dir(shared().join("data/imagenet-sample"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .take(40)
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_classify"))
        .arg("predict")
        .args(&photos)
        .current_dir(crate::util::root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("predictions"), "{first}");
    // The reading end is closed here, with most photos still to print.
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}",
        output.status
    );
    assert!(stderr_of(&output).is_empty(), "{}", stderr_of(&output));
}
