//! A YAML document as a tree whose every node keeps its line and column, built
//! from `saphyr-parser`'s events, so that checks long after parsing can still
//! point at the offending text. Mapping keys keep their order and duplicates
//! are refused here (YAML forbids them; most loaders silently keep the last).

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::error::Diagnostic;

/// Deepest nesting accepted: an inventory is a few levels deep; this stops
/// hostile input from exhausting the stack of the checks that walk the tree.
const MAX_DEPTH: usize = 64;
/// Most nodes an alias may expand to overall (the "billion laughs" defence).
const MAX_ALIAS_NODES: usize = 100_000;

/// A place in the inventory file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

fn pos(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar as written; `plain` is false for quoted and block scalars
    /// (so `"22"` stays text and `~` means null only when plain).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys in the order written.
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    /// True for an empty value, `~` or `null`.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The scalar's text, whatever its style.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// What kind of value this is, for "expected ..., found ..." messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            _ if self.is_null() => "nothing",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

enum Open {
    Seq(Pos, usize, Vec<Node>),
    Map(Pos, usize, Vec<(Node, Node)>, Option<Node>),
}

/// Parses one YAML document. An empty file is `Ok(None)`.
pub fn parse(text: &str) -> Result<Option<Node>, Diagnostic> {
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut expanded = 0usize;
    let mut documents = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| Diagnostic {
            pos: Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: format!("not valid YAML: {}", e.info()),
        })?;
        let at = pos(&span);
        let finished = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(Diagnostic::new(
                        at,
                        "more than one YAML document; an inventory is a single document",
                    ));
                }
                None
            }
            Event::Scalar(text, style, anchor, _tag) => Some(remember(
                &mut anchors,
                anchor,
                Node {
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                    pos: at,
                },
            )),
            Event::Alias(anchor) => {
                let Some(node) = anchors.get(&anchor) else {
                    return Err(Diagnostic::new(at, "alias to an unknown anchor"));
                };
                expanded += count(node);
                if expanded > MAX_ALIAS_NODES {
                    return Err(Diagnostic::new(at, "aliases expand to too many nodes"));
                }
                Some(Node {
                    value: node.value.clone(),
                    pos: at,
                })
            }
            Event::SequenceStart(anchor, _) => {
                open(&mut stack, Open::Seq(at, anchor, Vec::new()))?;
                None
            }
            Event::MappingStart(anchor, _) => {
                open(&mut stack, Open::Map(at, anchor, Vec::new(), None))?;
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Open::Seq(start, anchor, items)) => Some(remember(
                    &mut anchors,
                    anchor,
                    Node {
                        value: Value::Seq(items),
                        pos: start,
                    },
                )),
                _ => return Err(Diagnostic::new(at, "unbalanced sequence")),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Open::Map(start, anchor, entries, None)) => Some(remember(
                    &mut anchors,
                    anchor,
                    Node {
                        value: Value::Map(entries),
                        pos: start,
                    },
                )),
                _ => return Err(Diagnostic::new(at, "unbalanced mapping")),
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
        };
        let Some(node) = finished else { continue };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Open::Seq(_, _, items)) => items.push(node),
            Some(Open::Map(_, _, entries, pending)) => match pending.take() {
                None => {
                    if let Some(key) = node.as_scalar() {
                        if let Some((first, _)) =
                            entries.iter().find(|(k, _)| k.as_scalar() == Some(key))
                        {
                            return Err(Diagnostic::new(
                                node.pos,
                                format!(
                                    "duplicate key `{key}` (first at line {}, column {})",
                                    first.pos.line, first.pos.column
                                ),
                            ));
                        }
                    } else {
                        return Err(Diagnostic::new(
                            node.pos,
                            format!("expected a plain key, found {}", node.kind()),
                        ));
                    }
                    *pending = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
    Ok(root)
}

/// Opens a sequence or mapping at its start, refusing to nest deeper than
/// [`MAX_DEPTH`].
fn open(stack: &mut Vec<Open>, collection: Open) -> Result<(), Diagnostic> {
    if stack.len() >= MAX_DEPTH {
        let (Open::Seq(at, ..) | Open::Map(at, ..)) = collection;
        return Err(Diagnostic::new(
            at,
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    stack.push(collection);
    Ok(())
}

/// A finished `node`, kept under its `anchor` (if any) for later aliases.
fn remember(anchors: &mut HashMap<usize, Node>, anchor: usize, node: Node) -> Node {
    // saphyr numbers anchors from 1; 0 means "no anchor".
    if anchor != 0 {
        anchors.insert(anchor, node.clone());
    }
    node
}

fn count(node: &Node) -> usize {
    match &node.value {
        Value::Scalar { .. } => 1,
        Value::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count(k) + count(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(entries) => entries,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn nodes_keep_their_line_and_column() {
        let root = parse("a: 1\nb:\n  c: [x, \"y\"]\n").unwrap().unwrap();
        let entries = map(&root);
        assert_eq!(entries[0].0.pos, Pos { line: 1, column: 1 });
        assert_eq!(entries[1].0.as_scalar(), Some("b"));
        let inner = map(&entries[1].1);
        assert_eq!(inner[0].0.pos, Pos { line: 3, column: 3 });
        let Value::Seq(items) = &inner[0].1.value else {
            panic!("not a seq")
        };
        assert_eq!(
            items[1].pos,
            Pos {
                line: 3,
                column: 10
            }
        );
        assert_eq!(
            items[1].value,
            Value::Scalar {
                text: "y".into(),
                plain: false
            }
        );
    }

    #[test]
    fn duplicate_keys_are_refused_with_both_places() {
        let err = parse("hosts:\n  a: 1\n  a: 2\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 3, column: 3 });
        assert!(err.message.contains("first at line 2, column 3"), "{err}");
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let root = parse("x: &v {a: 1}\ny: *v\n").unwrap().unwrap();
        let entries = map(&root);
        assert_eq!(map(&entries[1].1)[0].0.as_scalar(), Some("a"));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.message.starts_with("not valid YAML"), "{err}");
        assert!(err.pos.line >= 1);
    }

    #[test]
    fn an_empty_file_is_no_document_and_nesting_is_bounded() {
        assert_eq!(parse("").unwrap(), None);
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&deep).unwrap_err().message.contains("nested deeper"));
    }
}
