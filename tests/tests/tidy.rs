//! The rules of the code base that the compiler does not keep, kept by a test (as
//! rust-analyzer's `tidy` does): which crate may depend on which, which gateway module may use
//! which, that ARCHITECTURE.md names only paths that exist and every gateway and agent source
//! file, and that every source file starts with a `//!` doc saying what it is for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every `.rs` file under `dir`, as paths relative to the workspace root.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root().join(dir)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path.strip_prefix(root()).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

// ---------------------------------------------------------------------------------------------
// Crates

/// Which of our crates each crate may depend on (normal and build dependencies, and its
/// tests' dev-dependencies).
const CRATE_RULES: &[(&str, &[&str])] = &[
    ("proto", &[]),
    ("certs", &["proto"]),
    ("adapters/parking", &["proto"]),
    ("adapters/navigation", &["proto"]),
    ("partner-kit", &["proto", "certs"]),
    ("adapters/identity", &["proto"]),
    ("vehicle-agent", &["proto"]),
    ("gateway", &["proto", "certs"]),
];

/// What each crate's tests may use besides [`CRATE_RULES`] (dev-dependencies only): the
/// development PKI, which issues their certificates. Never the gateway for the agent, nor the
/// agent for the gateway: each is tested against stand-ins, and together in `tests/`.
const DEV_RULES: &[(&str, &[&str])] = &[("vehicle-agent", &["certs"]), ("adapters/navigation", &["certs"])];

#[test]
fn crates_depend_on_ours_only_as_the_architecture_allows() {
    let ours: BTreeSet<String> = workspace_members()
        .iter()
        .map(|dir| package_name(&manifest(dir)))
        .collect();
    let mut broken = Vec::new();
    for (dir, allowed) in CRATE_RULES {
        let manifest = manifest(dir);
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = manifest.get(section).and_then(toml::Value::as_table) else {
                continue;
            };
            let dev_allowed: &[&str] = match section {
                "dev-dependencies" => DEV_RULES.iter().find(|(d, _)| d == dir).map_or(&[], |(_, a)| a),
                _ => &[],
            };
            for name in deps.keys().filter(|name| ours.contains(*name)) {
                if !allowed.contains(&name.as_str()) && !dev_allowed.contains(&name.as_str()) {
                    broken.push(format!("{dir}/Cargo.toml [{section}] names {name}"));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dependencies against the grain:\n{}",
        broken.join("\n")
    );
}

fn manifest(dir: &str) -> toml::Table {
    let path = root().join(dir).join("Cargo.toml");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn package_name(manifest: &toml::Table) -> String {
    manifest["package"]["name"].as_str().unwrap().to_owned()
}

fn workspace_members() -> Vec<String> {
    manifest(".")["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_crate_with_rules_is_a_workspace_member() {
    let members = workspace_members();
    for (dir, _) in CRATE_RULES {
        assert!(members.iter().any(|m| m == dir), "{dir} is not a workspace member");
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway modules

/// Which top-level modules of the gateway each may use (`crate::<module>`). `lib.rs`,
/// `main.rs` and the glue modules not listed may use anything.
const MODULE_RULES: &[(&str, &[&str])] = &[
    ("broker", &["bus", "config", "clock", "logsafe", "metrics"]),
    ("bus", &["clock", "logsafe", "metrics"]),
    (
        "routing",
        &["bus", "config", "store", "journal", "clock", "logsafe", "metrics"],
    ),
    (
        "events",
        &["bus", "config", "store", "journal", "clock", "logsafe", "metrics"],
    ),
    ("journal", &["store", "config", "clock", "logsafe", "metrics"]),
    ("store", &["clock", "logsafe", "metrics"]),
    (
        "ops",
        &[
            "broker",
            "bus",
            "routing",
            "store",
            "journal",
            "config",
            "clock",
            "logsafe",
            "metrics",
            "health",
            "listeners",
        ],
    ),
    ("config", &[]),
    ("listeners", &[]),
    ("clock", &[]),
    ("logsafe", &[]),
    ("metrics", &[]),
    // A client of fleet.v1 only (it must work against any gateway serving the contract); it
    // shows the gateway's text through the one escaping function.
    ("fleet_cli", &["logsafe"]),
];

/// The top-level module a gateway source file belongs to (`broker` for
/// `gateway/src/broker/listener.rs`, `clock` for `gateway/src/clock.rs`).
fn module_of(file: &Path) -> String {
    let inside = file.strip_prefix("gateway/src").unwrap();
    let first = inside.components().next().unwrap().as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Collects the module named right after `crate::` in every path and `use` of a file, and any
/// `super::super::` (which would leave the file's top-level module unseen).
#[derive(Default)]
struct CrateUses {
    modules: BTreeSet<String>,
    escapes: usize,
}

impl<'ast> Visit<'ast> for CrateUses {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.first().is_some_and(|s| s == "crate")
            && let Some(module) = segments.get(1)
        {
            self.modules.insert(module.clone());
        }
        if segments.windows(2).any(|w| w[0] == "super" && w[1] == "super") {
            self.escapes += 1;
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_use_tree(&mut self, tree: &'ast syn::UseTree) {
        if let syn::UseTree::Path(path) = tree
            && path.ident == "crate"
        {
            self.crate_use(&path.tree);
        }
        if let syn::UseTree::Path(path) = tree
            && path.ident == "super"
            && matches!(&*path.tree, syn::UseTree::Path(inner) if inner.ident == "super")
        {
            self.escapes += 1;
        }
        syn::visit::visit_use_tree(self, tree);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Paths inside macro calls (`tracing::info!(..)`, `on_writer!(..)`) are tokens to syn;
        // scan them for `crate :: module` by hand.
        let tokens: Vec<String> = mac.tokens.clone().into_iter().map(|t| t.to_string()).collect();
        for (i, token) in tokens.iter().enumerate() {
            if token == "crate"
                && tokens.get(i + 1).is_some_and(|t| t == ":")
                && let Some(module) = tokens.get(i + 3)
            {
                self.modules.insert(module.clone());
            }
        }
        syn::visit::visit_macro(self, mac);
    }
}

impl CrateUses {
    fn crate_use(&mut self, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                self.modules.insert(path.ident.to_string());
            }
            syn::UseTree::Name(name) => {
                self.modules.insert(name.ident.to_string());
            }
            syn::UseTree::Rename(rename) => {
                self.modules.insert(rename.ident.to_string());
            }
            syn::UseTree::Group(group) => group.items.iter().for_each(|item| self.crate_use(item)),
            syn::UseTree::Glob(_) => {
                self.modules.insert("*".into());
            }
        }
    }
}

fn crate_uses(file: &Path) -> CrateUses {
    let source = std::fs::read_to_string(root().join(file)).unwrap();
    let syntax = syn::parse_file(&source).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut uses = CrateUses::default();
    uses.visit_file(&syntax);
    uses
}

#[test]
fn gateway_modules_use_each_other_only_as_the_architecture_allows() {
    let rules: BTreeMap<&str, &[&str]> = MODULE_RULES.iter().copied().collect();
    let mut broken = Vec::new();
    for file in rust_files(Path::new("gateway/src")) {
        let module = module_of(&file);
        let Some(allowed) = rules.get(module.as_str()) else {
            continue;
        };
        let uses = crate_uses(&file);
        for used in &uses.modules {
            if *used != module && !allowed.contains(&used.as_str()) {
                broken.push(format!("{}: `{module}` uses `crate::{used}`", file.display()));
            }
        }
        if uses.escapes > 0 {
            broken.push(format!("{}: `super::super` reaches outside `{module}`", file.display()));
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_layering_check_sees_a_violation() {
    let mut uses = CrateUses::default();
    let syntax: syn::File = syn::parse_quote! {
        use crate::{bus::Mailboxes, routing::Dispatcher as D};
        fn f() { let _ = crate::store::Store::connect; tracing::info!(x = crate::events::X); }
        use super::super::secret;
    };
    uses.visit_file(&syntax);
    assert_eq!(
        uses.modules.iter().map(String::as_str).collect::<Vec<_>>(),
        ["bus", "events", "routing", "store"]
    );
    assert_eq!(uses.escapes, 1);
    assert_eq!(module_of(Path::new("gateway/src/broker/listener.rs")), "broker");
    assert_eq!(module_of(Path::new("gateway/src/clock.rs")), "clock");
}

#[test]
fn every_gateway_module_has_a_rule_or_is_glue() {
    let ruled: BTreeSet<&str> = MODULE_RULES.iter().map(|(m, _)| *m).collect();
    let glue = ["lib", "main", "cli", "connection_log", "fuzz", "health"];
    for file in rust_files(Path::new("gateway/src")) {
        let module = module_of(&file);
        assert!(
            ruled.contains(module.as_str()) || glue.contains(&module.as_str()),
            "{}: module `{module}` has no layering rule: add it to MODULE_RULES and ARCHITECTURE.md",
            file.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ARCHITECTURE.md

/// Backticked tokens of ARCHITECTURE.md that look like paths, each with the directories named
/// before it in the same code-map entry (a bullet), for names given relative to one of them
/// (`listener.rs` in the `gateway/src/broker/` entry, `main.rs` after `gateway/src/lib.rs`).
fn architecture_paths() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut found = Vec::new();
    let mut bases: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("- ") || line.starts_with("## ") || line.is_empty() {
            bases.clear();
        }
        for (i, token) in line.split('`').enumerate() {
            if i % 2 == 0 || token.contains(' ') || token.contains("://") || token.starts_with('/') {
                continue;
            }
            let is_dir = token.ends_with('/') && token.len() > 1;
            let is_file = [".rs", ".md", ".toml", ".sql", ".proto", ".sh"]
                .iter()
                .any(|ext| token.ends_with(ext));
            if is_dir || is_file {
                found.push((token.to_owned(), bases.clone()));
            }
            if is_dir {
                bases.push(token.to_owned());
            } else if is_file && let Some((dir, _)) = token.rsplit_once('/') {
                bases.push(format!("{dir}/"));
            }
        }
    }
    found
}

#[test]
fn every_path_architecture_md_names_exists() {
    let paths = architecture_paths();
    assert!(paths.len() > 40, "the code map names paths: {paths:?}");
    let missing: Vec<String> = paths
        .iter()
        .filter(|(path, bases)| {
            !root().join(path).exists() && !bases.iter().any(|base| root().join(base).join(path).exists())
        })
        .map(|(path, bases)| format!("{path} (in the entry naming {bases:?})"))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn architecture_md_names_every_gateway_and_agent_source_file() {
    let named: BTreeSet<String> = architecture_paths()
        .into_iter()
        .flat_map(|(path, bases)| {
            let relative: Vec<String> = bases.iter().map(|base| format!("{base}{path}")).collect();
            std::iter::once(path).chain(relative)
        })
        .collect();
    let mut unnamed = Vec::new();
    for file in rust_files(Path::new("gateway/src"))
        .into_iter()
        .chain(rust_files(Path::new("vehicle-agent/src")))
    {
        let full = file.to_string_lossy().to_string();
        let dir_entry = file.parent().map(|d| format!("{}/", d.display())).unwrap_or_default();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let is_named = named.contains(&full)
            || named.contains(&format!("{dir_entry}{name}"))
            || (name == "mod.rs" && named.contains(&dir_entry))
            || name == "tests.rs";
        if !is_named {
            unnamed.push(full);
        }
    }
    assert!(
        unnamed.is_empty(),
        "source files ARCHITECTURE.md does not name:\n{}",
        unnamed.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Module docs

#[test]
fn every_source_file_says_what_it_is_for() {
    let mut undocumented = Vec::new();
    for dir in [
        "proto/src",
        "certs/src",
        "gateway/src",
        "vehicle-agent/src",
        "adapters/parking/src",
        "bench/src",
        "tests/src",
        "demo/src",
    ] {
        for file in rust_files(Path::new(dir)) {
            let source = std::fs::read_to_string(root().join(&file)).unwrap();
            if !source.trim_start().starts_with("//!") {
                undocumented.push(file.display().to_string());
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "files without a `//!` doc:\n{}",
        undocumented.join("\n")
    );
}
