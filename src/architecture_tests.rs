//! The crate's layering, checked from its source (issue 11: "no import runs
//! upward and there is no import cycle").
//!
//! The source is scanned as text, like `sys`'s libc test: every `crate::…`,
//! `super::…` and `self::…` path (grouped `use` trees included) is resolved to
//! the module it names, following `pub use` re-exports to where a name lives,
//! which gives the import graph. Text rather than `syn`:
//! no new dependency, and paths inside macro bodies (`assert!`, `format!`),
//! which `syn` leaves as unparsed tokens, are seen too. It relies on rustfmt's
//! layout for one thing: an inline `mod x {` closes with a `}` at its indent.

use std::collections::{BTreeMap, BTreeSet};

/// A module's path from the crate root (`["registry", "gc"]`); the root is empty.
type Module = Vec<String>;

/// The top-level modules by layer: a module imports only from layers below
/// its own; modules of one rank are peers that import nothing of each other.
/// `serve` is the transport above the handlers; `http` (the handlers) and
/// `client` (the registry client the CLI uses) sit above `auth` and
/// `registry`, which are peers because access is decided in `http` and the
/// registry never asks who calls. `config` is data: it gathers the config
/// types that `auth` and `registry` own, and is read by `serve` and `lib.rs`,
/// never by the layers it describes. `mirror` (pull-through mirroring of
/// upstream registries) sits below `config`, which gathers its entries'
/// type, and above the `registry` it stores what it fetches through, for
/// `http` to serve. `storage` is below the registry; `oci`
/// (the spec's rules, no I/O) and `sys` (the one home of `unsafe`) are the
/// ground and import nothing of the crate. `lib.rs` and `main.rs` are the
/// roots and may import anything.
const RANKS: &[(&str, u8)] = &[
    ("serve", 6),
    ("http", 5),
    ("client", 5),
    ("config", 4),
    ("mirror", 3),
    ("events", 3),
    ("auth", 2),
    ("registry", 2),
    ("storage", 1),
    ("oci", 0),
    ("sys", 0),
    ("metrics", 0),
    ("traces", 0),
];

/// Imports that go down but past the layer that owns the access: (from, to,
/// the layer to go through). Checked like the ranks.
const PAST: &[(&str, &str, &str)] = &[
    ("http", "storage", "registry"),
    ("serve", "storage", "registry"),
    ("client", "registry", "the HTTP API"),
    ("client", "storage", "the HTTP API"),
    ("mirror", "storage", "registry"),
];

/// Imports against the layers, known and not yet fixed: (from, to, why).
/// Each must still occur, so that a fixed one is taken off this list.
const KNOWN_AGAINST_LAYERS: &[(&str, &str, &str)] = &[];

/// Known cycles, each one's modules sorted; each must still occur. Empty: keep
/// it so.
const KNOWN_CYCLES: &[&[&str]] = &[];

/// One import: `from` (the module, inline ones such as `tests` included)
/// names something in `to`, at `at` (file:line).
#[derive(Debug)]
struct Import {
    from: Module,
    to: Module,
    /// The module the path itself spells, re-exports not followed: a layer
    /// that re-exports a lower layer's type makes it part of its own API, so
    /// naming it there is not reaching past that layer (`PAST`).
    named: Module,
    at: String,
}

/// What paths resolve against: the modules (files and inline ones), and the
/// names each module re-exports (`pub use policy::Grant` in `auth`), with
/// the path each stands for, so that `super::Grant` from `auth::robots`
/// resolves to `auth::policy`, where `Grant` lives, not to `auth`.
#[derive(Default)]
struct Names {
    modules: BTreeSet<Module>,
    reexports: BTreeMap<(Module, String), Vec<String>>,
}

/// The module a file under `src/` is (`a/mod.rs` is `a`); `None` for
/// `main.rs`, the binary's root, whose `crate` is another crate.
fn module_of(relative: &str) -> Option<Module> {
    let path = relative.strip_suffix(".rs")?;
    let mut segments: Module = path.split('/').map(str::to_owned).collect();
    match segments.last().map(String::as_str) {
        Some("main") if segments.len() == 1 => return None,
        Some("lib") if segments.len() == 1 => segments.clear(),
        Some("mod") => drop(segments.pop()),
        _ => {}
    }
    Some(segments)
}

/// The line without its `//` comment (one outside a string literal).
fn code_of(line: &str) -> &str {
    let mut in_string = false;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The name of the inline module a line opens (`mod tests {`), if it does.
fn inline_module(code: &str) -> Option<&str> {
    let (visibility, rest) = code.trim().split_once("mod ")?;
    let name = rest.strip_suffix(" {")?;
    let is_name = name.chars().all(|c| c.is_alphanumeric() || c == '_');
    (is_name && (visibility.is_empty() || visibility.starts_with("pub"))).then_some(name)
}

/// The paths a path tree at the start of `text` spells (`a::b`,
/// `a::{b, c::{d, e}}`, `a::*`), each a list of segments; `*`, `self` in a
/// group and an alias end a path where they stand.
fn expand(text: &mut &str) -> Vec<Vec<String>> {
    *text = text.trim_start();
    if let Some(rest) = text.strip_prefix('{') {
        *text = rest;
        let mut paths = Vec::new();
        loop {
            *text = text.trim_start();
            if let Some(rest) = text.strip_prefix('}') {
                *text = rest;
                return paths;
            }
            let before = text.len();
            paths.extend(expand(text));
            *text = text.trim_start();
            *text = text.strip_prefix(',').unwrap_or(text);
            if text.len() == before {
                return paths; // not a use tree after all: stop, never loop
            }
        }
    }
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let (ident, rest) = text.split_at(end);
    *text = rest;
    if ident.is_empty() {
        *text = text.strip_prefix('*').unwrap_or(text);
        return vec![Vec::new()];
    }
    if let Some(rest) = text.strip_prefix("::") {
        *text = rest;
        let mut paths = expand(text);
        paths.iter_mut().for_each(|p| p.insert(0, ident.to_owned()));
        return paths;
    }
    if let Some(alias) = text.trim_start().strip_prefix("as ") {
        let alias = alias.trim_start();
        let end = alias.find(|c: char| !(c.is_alphanumeric() || c == '_'));
        *text = &alias[end.unwrap_or(alias.len())..];
    }
    vec![vec![ident.to_owned()]]
}

/// The paths (starting `crate`, `super` or `self`) one file names, with
/// the module, inline ones such as `tests` included, that names each and
/// where. `names` collects the inline modules and re-exports it finds.
fn paths_of(
    file: &str,
    module: &Module,
    text: &str,
    names: &mut Names,
) -> Vec<(Module, Vec<String>, String)> {
    let mut code = String::new();
    let mut line_module = Vec::new();
    let mut open: Vec<(usize, String)> = Vec::new();
    for line in text.lines() {
        let line = code_of(line);
        let indent = line.len() - line.trim_start().len();
        if line.trim() == "}" && open.last().is_some_and(|(at, _)| *at == indent) {
            open.pop();
        }
        let mut here = module.clone();
        here.extend(open.iter().map(|(_, name)| name.clone()));
        line_module.push(here.clone());
        if let Some(name) = inline_module(line) {
            open.push((indent, name.to_owned()));
            here.push(name.to_owned());
            names.modules.insert(here);
        }
        code.push_str(line);
        code.push('\n');
    }
    let mut found = Vec::new();
    for keyword in ["crate::", "super::", "self::"] {
        for (start, _) in code.match_indices(keyword) {
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `x::super::`, `myself::`: not where a path starts
            }
            let line = code[..start].matches('\n').count();
            for path in expand(&mut &code[start..]) {
                let at = format!("{file}:{}", line + 1);
                found.push((line_module[line].clone(), path, at));
            }
        }
    }
    // Re-exports: `pub use` (any visibility), where a bare path (`policy::X`)
    // starts from the module itself. A glob (`pub use x::*`) names nothing.
    for (start, _) in code.match_indices("use ") {
        let line_start = code[..start].rfind('\n').map_or(0, |i| i + 1);
        let visibility = code[line_start..start].trim();
        if !(visibility == "pub" || visibility.starts_with("pub(") && visibility.ends_with(')')) {
            continue;
        }
        let here = &line_module[code[..start].matches('\n').count()];
        for mut path in expand(&mut &code[start + 4..]) {
            if !matches!(
                path.first().map(String::as_str),
                Some("crate" | "super" | "self")
            ) {
                path.insert(0, "self".to_owned());
            }
            if let Some(name) = path.last().filter(|n| n.as_str() != "self") {
                names.reexports.insert((here.clone(), name.clone()), path);
            }
        }
    }
    found
}

/// The module a path (starting `crate`, `super` or `self`) names from
/// `from`: the longest known module its segments spell, or, when the next
/// segment is a name that module re-exports, the module that name comes from.
fn resolve(from: &Module, path: &[String], names: &Names, follow: bool) -> Module {
    let mut segments = path.iter().map(String::as_str).peekable();
    let mut module = from.clone();
    match segments.peek() {
        Some(&"crate") => module.clear(),
        Some(&"super") => {
            while segments.next_if_eq(&"super").is_some() {
                let left = module.pop();
                assert!(left.is_some(), "{path:?} from {from:?} leaves the crate");
            }
        }
        _ => {}
    }
    for segment in segments.filter(|s| !matches!(*s, "crate" | "self")) {
        module.push(segment.to_owned());
        if !names.modules.contains(&module) {
            module.pop();
            // Modules first: so `pub use self::child` cannot loop.
            let key = (module, segment.to_owned());
            return match names.reexports.get(&key).filter(|_| follow) {
                Some(reexported) => resolve(&key.0, reexported, names, follow),
                None => key.0,
            };
        }
    }
    module
}

/// The import graph of a crate given as (file under src/, text) pairs.
fn import_graph(files: &[(String, String)]) -> Vec<Import> {
    let mut names = Names {
        modules: files.iter().filter_map(|(f, _)| module_of(f)).collect(),
        ..Names::default()
    };
    let mut paths = Vec::new();
    for (file, text) in files {
        if let Some(module) = module_of(file) {
            paths.extend(paths_of(file, &module, text, &mut names));
        }
    }
    // Resolved once every inline module and re-export is known.
    paths
        .into_iter()
        .map(|(from, path, at)| Import {
            to: resolve(&from, &path, &names, true),
            named: resolve(&from, &path, &names, false),
            from,
            at,
        })
        .collect()
}

/// Imports from one top-level module into another of the same or a higher
/// rank, into the crate root, or past a layer (`PAST`): (from, to, at).
fn against_layers(imports: &[Import]) -> Vec<(String, String, String)> {
    let rank = |top: &str| RANKS.iter().find(|(m, _)| *m == top).map(|(_, r)| *r);
    let mut found = Vec::new();
    for import in imports {
        let Some(from) = import.from.first() else {
            continue;
        };
        let to = import.to.first().map_or("crate", String::as_str);
        let rank_from = rank(from).unwrap_or_else(|| panic!("{from} has no rank in RANKS"));
        let rank_to = if to == "crate" {
            Some(u8::MAX)
        } else {
            rank(to)
        };
        let named = import.named.first().map_or("crate", String::as_str);
        let past = PAST.iter().any(|(f, t, _)| f == from && *t == named);
        if from != to && (past || rank_to.is_none_or(|r| r >= rank_from)) {
            found.push((from.clone(), to.to_owned(), import.at.clone()));
        }
    }
    found
}

/// The cycles of the import graph, each a sorted list of module names. A
/// module may use its ancestors (`super::Registry`) and its own descendants;
/// any other import `a::x -> a::y::z` is lifted to the two siblings under
/// their deepest common ancestor (`a::x -> a::y`), and the sibling graph at
/// every level must have no cycle.
fn cycles(imports: &[Import]) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for Import { from, to, .. } in imports {
        let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
        if common < from.len() && common < to.len() {
            let (a, b) = (from[..=common].to_vec(), to[..=common].to_vec());
            graph.entry(b.clone()).or_default();
            graph.entry(a).or_default().insert(b);
        }
    }
    // The strongly connected components, as the modules that reach each
    // other: with some fifty modules, reachability from each is cheap and
    // plainer than Tarjan's single pass.
    let reachable = |start: &Module| {
        let (mut seen, mut todo) = (BTreeSet::new(), vec![start]);
        while let Some(module) = todo.pop() {
            for next in &graph[module] {
                if seen.insert(next) {
                    todo.push(next);
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&Module, BTreeSet<&Module>> =
        graph.keys().map(|m| (m, reachable(m))).collect();
    let mut found = BTreeSet::new();
    for (module, reached) in &reaches {
        if reached.contains(module) {
            let component = reached
                .iter()
                .filter(|other| reaches[*other].contains(module));
            found.insert(component.map(|m| m.join("::")).collect::<Vec<_>>());
        }
    }
    found.into_iter().collect()
}

/// Every source file under `src/` but this one, whose examples are not
/// imports, as (path under src/, text).
fn crate_sources() -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, src: &std::path::Path, found: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, src, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(src).unwrap().to_str().unwrap().to_owned();
                if relative != "architecture_tests.rs" {
                    found.push((relative, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &src, &mut files);
    assert!(files.len() > 20, "found the sources: {files:?}");
    files
}

#[test]
fn imports_run_only_downward_through_the_layers() {
    let imports = import_graph(&crate_sources());
    assert!(imports.len() > 100, "found the imports: {imports:#?}");
    let found = against_layers(&imports);
    let unknown: Vec<_> = found
        .iter()
        .filter(|(from, to, _)| {
            !KNOWN_AGAINST_LAYERS
                .iter()
                .any(|(f, t, _)| f == from && t == to)
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "imports against the layers (RANKS, PAST), as (from, to, where): {unknown:#?}"
    );
    for (from, to, why) in KNOWN_AGAINST_LAYERS {
        assert!(
            found.iter().any(|(f, t, _)| f == from && t == to),
            "{from} -> {to} is gone: take it off KNOWN_AGAINST_LAYERS ({why})"
        );
    }
}

#[test]
fn no_modules_import_each_other_in_a_cycle() {
    let imports = import_graph(&crate_sources());
    let found = cycles(&imports);
    let known: Vec<Vec<String>> = KNOWN_CYCLES
        .iter()
        .map(|c| c.iter().map(|m| m.to_string()).collect())
        .collect();
    // Each new cycle with the imports that make it (between two members).
    let unknown: Vec<(&Vec<String>, BTreeSet<String>)> = found
        .iter()
        .filter(|cycle| !known.contains(cycle))
        .map(|cycle| {
            let member = |m: &Module| {
                let name = m.join("::");
                let inside = |c: &String| name == *c || name.starts_with(&format!("{c}::"));
                cycle.iter().position(inside)
            };
            let imports = imports
                .iter()
                .filter(
                    |i| matches!((member(&i.from), member(&i.to)), (Some(a), Some(b)) if a != b),
                )
                .map(|i| format!("{} -> {} ({})", i.from.join("::"), i.to.join("::"), i.at));
            (cycle, imports.collect::<BTreeSet<_>>())
        })
        .collect();
    assert!(unknown.is_empty(), "import cycles: {unknown:#?}");
    for cycle in &known {
        assert!(
            found.contains(cycle),
            "the cycle {cycle:?} is gone: take it off KNOWN_CYCLES"
        );
    }
}

mod parser_and_checks {
    use super::*;

    fn file(path: &str, text: &str) -> (String, String) {
        (path.to_owned(), text.to_owned())
    }

    fn module(path: &str) -> Module {
        path.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The (from, to) pairs of a crate's import graph, as `a::b` strings.
    fn edges(files: &[(String, String)]) -> BTreeSet<(String, String)> {
        import_graph(files)
            .into_iter()
            .map(|i| (i.from.join("::"), i.to.join("::")))
            .collect()
    }

    #[test]
    fn files_are_modules_and_main_is_another_crate() {
        assert_eq!(module_of("lib.rs"), Some(module("")));
        assert_eq!(module_of("main.rs"), None);
        assert_eq!(module_of("oci/mod.rs"), Some(module("oci")));
        assert_eq!(module_of("registry/gc.rs"), Some(module("registry::gc")));
        assert_eq!(module_of("config.rs"), Some(module("config")));
    }

    #[test]
    fn grouped_super_and_self_paths_resolve_to_their_modules() {
        let files = [
            file("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
            file("a/mod.rs", "mod x;\nmod y;\nuse self::x::Thing;\n"),
            file(
                "a/x.rs",
                "use crate::{\n    b::Be,\n    c::{self, deep::{D, E as F}},\n};\n\
                 fn f() { super::super::b::call(); super::y::Why::new(); }\n",
            ),
            file(
                "a/y.rs",
                "// use crate::b::Commented;\nconst URL: &str = \"http://x\"; // crate::c\n",
            ),
            file("b.rs", "pub fn call() {}\n"),
            file("c/mod.rs", "pub mod deep;\n"),
            file("c/deep.rs", "pub struct D;\n"),
        ];
        let expected = pairs(&[
            ("a", "a::x"),
            ("a::x", "b"),
            ("a::x", "c"),
            ("a::x", "c::deep"),
            ("a::x", "a::y"),
        ]);
        assert_eq!(edges(&files), expected);
    }

    #[test]
    fn a_name_the_parent_reexports_resolves_to_the_module_it_lives_in() {
        let files = [
            file("lib.rs", "mod auth;\n"),
            file(
                "auth/mod.rs",
                "mod policy;\nmod robots;\npub use policy::{Grant, Identity};\n\
                 pub(crate) use self::robots::Robot;\npub struct Secret;\n",
            ),
            file("auth/robots.rs", "use super::{Grant, Secret};\n"),
            file("auth/policy.rs", "fn f() { crate::auth::Robot::new(); }\n"),
        ];
        // A bare path (`policy::…`) is a module's use of its own child, which
        // no check needs: it is read only as a re-export.
        let expected = pairs(&[
            ("auth", "auth::robots"),
            ("auth::robots", "auth::policy"),
            ("auth::robots", "auth"),
            ("auth::policy", "auth::robots"),
        ]);
        assert_eq!(edges(&files), expected);
        let found = cycles(&import_graph(&files));
        assert_eq!(found, vec![module_names(&["auth::policy", "auth::robots"])]);
    }

    #[test]
    fn an_inline_test_module_is_its_own_module_below_its_file() {
        let files = [
            file("lib.rs", "mod a;\nmod b;\n"),
            file(
                "a.rs",
                "fn f() {}\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::b::B;\n}\n\
                 use crate::b::After;\n",
            ),
            file("b.rs", "fn g() { crate::a::tests::helper(); }\n"),
        ];
        let expected = pairs(&[
            ("a::tests", "a"),
            ("a::tests", "b"),
            ("a", "b"),
            ("b", "a::tests"),
        ]);
        assert_eq!(edges(&files), expected);
    }

    #[test]
    fn an_import_up_sideways_into_the_root_or_past_a_layer_is_against_the_layers() {
        let files = [
            file("lib.rs", "pub fn build() {}\n"),
            file("oci/mod.rs", "pub struct Digest;\n"),
            file("storage/mod.rs", "use crate::{oci::Digest, registry::R};\n"),
            file("auth/mod.rs", "pub struct Secret;\n"),
            file(
                "registry/mod.rs",
                "use crate::auth::Secret;\npub use crate::storage::S;\nfn f() { crate::build(); }\n",
            ),
            file(
                "http/mod.rs",
                "use crate::{oci::Digest, registry::R, storage::S};\n",
            ),
            // Through the registry's own re-export: its API, not past it.
            file("http/blobs.rs", "use crate::registry::S;\n"),
        ];
        let found: BTreeSet<(String, String)> = against_layers(&import_graph(&files))
            .into_iter()
            .map(|(from, to, _)| (from, to))
            .collect();
        let expected = pairs(&[
            ("storage", "registry"),
            ("registry", "auth"),
            ("registry", "crate"),
            ("http", "storage"),
        ]);
        assert_eq!(found, expected);
    }

    #[test]
    fn a_cycle_is_found_at_any_level_and_a_module_may_use_its_parent() {
        let files = [
            file("lib.rs", "mod p;\nmod q;\n"),
            // p::one -> p::two -> p::three -> p::one, and the parent's
            // `use self::one` with the children's `super::P` is no cycle.
            file(
                "p/mod.rs",
                "mod one;\nmod two;\nmod three;\nuse self::one::X;\npub struct P;\n",
            ),
            file("p/one.rs", "use super::{two::Y, P};\n"),
            file("p/two.rs", "use super::three::Z;\n"),
            file("p/three.rs", "use super::one::X;\n"),
            // q::a -> p::one lifts to q -> p; no cycle until p::one uses q.
            file("q/mod.rs", "mod a;\n"),
            file("q/a.rs", "use crate::p::one::X;\n"),
        ];
        assert_eq!(
            cycles(&import_graph(&files)),
            vec![module_names(&["p::one", "p::three", "p::two"])]
        );
        let mut with_q = files.to_vec();
        with_q[2] = file("p/one.rs", "use super::{two::Y, P};\nuse crate::q::Q;\n");
        assert_eq!(
            cycles(&import_graph(&with_q)),
            vec![
                module_names(&["p", "q"]),
                module_names(&["p::one", "p::three", "p::two"])
            ]
        );
        let acyclic = [
            file("lib.rs", "mod p;\n"),
            file("p/mod.rs", "mod one;\nuse self::one::X;\n"),
            file("p/one.rs", "use super::P;\n"),
        ];
        assert!(cycles(&import_graph(&acyclic)).is_empty());
    }

    fn pairs(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn module_names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }
}
