//! tracer's modules, and the kernel programs', import each other without a
//! circle: at every level of the module tree, the graph of which sibling uses which is acyclic (a
//! module's use of its own parent or children does not count). Read from
//! the sources, so that a new circle fails the unit tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// A module as a path of names from the crate root (`[]` is the root).
type ModPath = Vec<String>;

fn module_of(file: &Path, src: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && !path.to_string_lossy().ends_with("_tests.rs")
        {
            out.push(path);
        }
    }
}

/// The code of a file without its test module (tests come last).
fn non_test_code(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its full paths.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let mut base = prefix.to_vec();
        base.extend(head);
        let inner = &tree[open + 1..tree.rfind('}').expect("balanced use tree")];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &base, out);
        return;
    }
    let item = tree.split(" as ").next().unwrap_or(tree).trim();
    if item.is_empty() {
        return;
    }
    let mut path = prefix.to_vec();
    path.extend(
        item.split("::")
            .map(str::trim)
            .filter(|s| *s != "self" && *s != "*")
            .map(str::to_owned),
    );
    out.push(path);
}

/// Every module path `code` (in module `me`) refers to through `crate::`
/// or `super::`.
fn references(code: &str, me: &ModPath, is_dir_module: bool) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // `use` statements, possibly spanning lines.
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = rest.find(';') else { break };
        let tree: String = rest[..end].split_whitespace().collect::<Vec<_>>().join(" ");
        rest = &rest[end..];
        let base = if let Some(t) = tree.strip_prefix("crate::") {
            (Vec::new(), t.to_owned())
        } else if tree.starts_with("super::") {
            // `super` of a file module is its directory's module; of a
            // mod.rs, the directory's parent.
            let mut base = me.clone();
            let mut t = tree.as_str();
            if !is_dir_module {
                base.pop();
            }
            while let Some(stripped) = t.strip_prefix("super::") {
                base.pop();
                t = stripped;
            }
            (base, t.to_owned())
        } else {
            continue;
        };
        expand(&base.1, &base.0, &mut out);
    }
    // Paths written out in code: `crate::a::b::item`.
    for (i, _) in code.match_indices("crate::") {
        let tail: String = code[i + 7..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let path: Vec<String> = tail
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if !path.is_empty() {
            out.push(path);
        }
    }
    out
}

/// Sibling edges of the crate whose sources are in `src`, by parent module;
/// fails on a circle.
fn check_crate(src: &Path) -> BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| module_of(f, src)).collect();
    // Edges between siblings, keyed by their parent.
    let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let me = module_of(file, src);
        let is_dir_module = file.file_name().is_some_and(|n| n == "mod.rs");
        let text = fs::read_to_string(file).expect("read source");
        for path in references(non_test_code(&text), &me, is_dir_module) {
            // The longest prefix that is a module.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p))
                .unwrap_or_default();
            let common = me.iter().zip(&target).take_while(|(a, b)| a == b).count();
            // A module's own ancestors and descendants do not count.
            if common == me.len() || common == target.len() {
                continue;
            }
            graphs
                .entry(me[..common].to_vec())
                .or_default()
                .entry(me[common].clone())
                .or_default()
                .insert(target[common].clone());
        }
    }
    for (parent, graph) in &graphs {
        if let Some(cycle) = find_cycle(graph) {
            panic!(
                "modules of {}: crate::{} import each other in a circle: {}",
                src.display(),
                parent.join("::"),
                cycle.join(" -> ")
            );
        }
    }
    graphs
}

#[test]
fn modules_import_each_other_without_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graphs = check_crate(&root.join("src"));
    // The checker sees edges at all (a parse that finds nothing passes).
    assert!(
        graphs
            .get(&Vec::new())
            .is_some_and(|g| g.get("sources").is_some_and(|e| e.contains("model"))),
        "sources -> model not found: {graphs:?}"
    );
    let kernel = check_crate(&root.join("../tracer-ebpf/src"));
    assert!(
        kernel
            .get(&Vec::new())
            .is_some_and(|g| g.get("submit").is_some_and(|e| e.contains("python"))),
        "submit -> python not found: {kernel:?}"
    );
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}
