//! The server's layering, checked on its source: the service layer
//! (`src/service/`) names nothing of HTTP — no axum, no handler module, no
//! `ApiError` — so federation or a console can call the same operations, and
//! no cycle runs between the handlers and the operations.

use std::path::Path;

/// Modules of the HTTP layer, which the service layer must not use.
const HTTP: &[&str] = &[
    "axum",
    "crate::api",
    "crate::events",
    "crate::error",
    "crate::routes",
    "crate::devices",
    "crate::log::routes",
    "ApiError",
    "StatusCode",
];

#[test]
fn the_service_layer_names_nothing_of_http() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/service");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in HTTP {
                assert!(
                    !code.contains(word),
                    "{}:{}: the service layer uses {word}: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} files in {}", dir.display());
}

/// Route modules share the edge (`extract.rs`) and the service layer, not
/// each other: no cycle between handlers (api.rs only assembles the router).
#[test]
fn route_modules_do_not_use_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for module in [
        "devices.rs",
        "events.rs",
        "log.rs",
        "witness.rs",
        "extract.rs",
    ] {
        let text = std::fs::read_to_string(src.join(module)).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for other in [
                "crate::api",
                "crate::devices",
                "crate::events::",
                "crate::log::routes",
            ] {
                if other
                    .trim_end_matches("::")
                    .ends_with(module.trim_end_matches(".rs"))
                {
                    continue;
                }
                assert!(
                    !code.contains(other),
                    "src/{module}:{}: a route module uses {other}: {line}",
                    n + 1
                );
            }
        }
    }
}
