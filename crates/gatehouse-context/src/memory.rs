//! Memory detection (the seed's MCP memory patterns): how much of a prompt is memory or MCP
//! content injected by the client (memory blocks, MCP tool results, tool calls of the seed's MCP
//! servers) rather than conversation. A match counts when it is at least
//! [`MIN_MEMORY_TOKENS`] long; the request then records its memory tokens, chat tokens and ratio.
//!
//! The patterns are the ten of the seed repository's `core/constants.py` (`MCP_PATTERNS`). A body
//! holding none of their literals costs one Aho-Corasick pass.

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::bytes::Regex;

/// Shorter matches are mentions, not memory (the seed's `MCP_MIN_MEMORY_TOKENS`).
pub const MIN_MEMORY_TOKENS: u64 = 20;

/// Name and pattern of each kind of memory content.
const PATTERNS: &[(&str, &str)] = &[
    ("memory_tag", r"(?s)<mcp-memory>.*?</mcp-memory>"),
    ("memory_ref", r"@memory\[[^\]]+\]"),
    ("memory_block", r"(?s)\[MEMORY\].*?\[/MEMORY\]"),
    ("mcp_result", r"(?s)<mcp-result[^>]*>.*?</mcp-result>"),
    ("mcp_tool", r"(?s)<mcp-tool[^>]*>.*?</mcp-tool>"),
    (
        "context_memory",
        r"Contexte\s+précédent|Mémoire\s+de\s+la\s+session|Memory\s+from\s+previous",
    ),
    (
        "mcp_shrimp_task_manager",
        r"mcp8_(?:analyze_task|clear_all_tasks|delete_task|execute_task|get_task_detail|init_project_rules|list_tasks|plan_task|process_thought|query_task|reflect_task|research_mode|split_tasks|update_task|verify_task)",
    ),
    (
        "mcp_sequential_thinking",
        r"sequentialthinking_tools|sequential_thinking",
    ),
    (
        "mcp_fast_filesystem",
        r"fast_(?:list_allowed_directories|read_file|read_multiple_files|write_file|large_write_file|list_directory|get_file_info|create_directory|search_files|search_code|get_directory_tree|get_disk_usage|find_large_files|edit_block|safe_edit|edit_multiple_blocks|edit_blocks|extract_lines|copy_file|move_file|delete_file|batch_file_operations|compress_files|extract_archive|sync_directories)",
    ),
    (
        "mcp_json_query",
        r"json_query_(?:jsonpath|search_keys|search_values)",
    ),
];

/// Literals at least one of which every match contains; the cheap first pass. Tool names are
/// listed whole, so ordinary code (`fast_path`, `sequential scan`) does not wake the regexes.
const LITERALS: &[&str] = &[
    "<mcp-memory>",
    "@memory[",
    "[MEMORY]",
    "<mcp-result",
    "<mcp-tool",
    "Contexte",
    "Mémoire",
    "Memory from",
    "mcp8_",
    "sequentialthinking_tools",
    "sequential_thinking",
    "json_query_",
];

/// The fast-filesystem tool names, also literals of the first pass.
const FAST_TOOLS: &[&str] = &[
    "list_allowed_directories",
    "read_file",
    "read_multiple_files",
    "write_file",
    "large_write_file",
    "list_directory",
    "get_file_info",
    "create_directory",
    "search_files",
    "search_code",
    "get_directory_tree",
    "get_disk_usage",
    "find_large_files",
    "edit_block",
    "safe_edit",
    "edit_multiple_blocks",
    "edit_blocks",
    "extract_lines",
    "copy_file",
    "move_file",
    "delete_file",
    "batch_file_operations",
    "compress_files",
    "extract_archive",
    "sync_directories",
];

pub struct Detector {
    prefilter: AhoCorasick,
    patterns: Vec<(&'static str, Regex)>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector").finish_non_exhaustive()
    }
}

/// One stretch of memory content in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub kind: &'static str,
    pub start: usize,
    pub end: usize,
}

impl Detector {
    /// The seed's patterns, compiled once. `None` only if a constant pattern were invalid,
    /// which the tests rule out.
    pub fn shared() -> Option<&'static Self> {
        static D: OnceLock<Option<Detector>> = OnceLock::new();
        D.get_or_init(|| {
            let fast: Vec<String> = FAST_TOOLS.iter().map(|t| format!("fast_{t}")).collect();
            let literals = LITERALS
                .iter()
                .map(|l| (*l).to_owned())
                .chain(fast)
                .collect::<Vec<_>>();
            let prefilter = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostFirst)
                .build(&literals)
                .ok()?;
            let patterns = PATTERNS
                .iter()
                // Byte classes: `\s` needs no Unicode tables; literals such as `é` match their
                // UTF-8 bytes.
                .map(|(k, p)| Regex::new(&format!("(?-u){p}")).ok().map(|r| (*k, r)))
                .collect::<Option<Vec<_>>>()?;
            Some(Self {
                prefilter,
                patterns,
            })
        })
        .as_ref()
    }

    /// Whether `bytes` could hold memory content at all.
    pub fn may_contain(&self, bytes: &[u8]) -> bool {
        self.prefilter.is_match(bytes)
    }

    /// The memory stretches of `text`, in order, without overlaps.
    pub fn spans(&self, text: &str) -> Vec<Span> {
        if !self.may_contain(text.as_bytes()) {
            return Vec::new();
        }
        let mut spans: Vec<Span> = self
            .patterns
            .iter()
            .flat_map(|(kind, re)| {
                re.find_iter(text.as_bytes()).map(move |m| Span {
                    kind,
                    start: m.start(),
                    end: m.end(),
                })
            })
            .collect();
        spans.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
        let mut out: Vec<Span> = Vec::with_capacity(spans.len());
        for s in spans {
            if out.last().is_none_or(|l| s.start >= l.end) {
                out.push(s);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<&'static str> {
        Detector::shared()
            .unwrap()
            .spans(text)
            .into_iter()
            .map(|s| s.kind)
            .collect()
    }

    #[test]
    fn the_patterns_compile() {
        assert!(Detector::shared().is_some());
    }

    #[test]
    fn each_kind_of_memory_content() {
        assert_eq!(
            kinds("a <mcp-memory>user prefers tabs</mcp-memory> b"),
            ["memory_tag"]
        );
        assert_eq!(kinds("see @memory[project-style] please"), ["memory_ref"]);
        assert_eq!(
            kinds("[MEMORY]\nlast time we fixed X\n[/MEMORY]"),
            ["memory_block"]
        );
        assert_eq!(
            kinds(r#"<mcp-result tool="search">3 hits</mcp-result>"#),
            ["mcp_result"]
        );
        assert_eq!(kinds("<mcp-tool name=\"x\">{}</mcp-tool>"), ["mcp_tool"]);
        assert_eq!(
            kinds("Memory from previous sessions: …"),
            ["context_memory"]
        );
        assert_eq!(kinds("Mémoire de la session : …"), ["context_memory"]);
        assert_eq!(
            kinds("called mcp8_plan_task then"),
            ["mcp_shrimp_task_manager"]
        );
        assert_eq!(
            kinds("sequentialthinking_tools step 3"),
            ["mcp_sequential_thinking"]
        );
        assert_eq!(kinds("fast_read_file(src/lib.rs)"), ["mcp_fast_filesystem"]);
        assert_eq!(kinds("json_query_jsonpath $.a"), ["mcp_json_query"]);
    }

    #[test]
    fn plain_text_and_near_misses_are_not_memory() {
        for t in [
            "fix the memory leak in the parser",
            "a fast_path for reads",
            "<mcp-memory> never closed",
            "sequential scan of the table",
            "",
        ] {
            assert_eq!(kinds(t), Vec::<&str>::new(), "{t}");
        }
    }

    #[test]
    fn nested_matches_count_once() {
        let t = "<mcp-result>fast_read_file: 10 lines</mcp-result>";
        assert_eq!(kinds(t), ["mcp_result"]);
    }
}
