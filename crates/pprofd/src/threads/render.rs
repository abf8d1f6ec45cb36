//! The forms a dump is served in: Go's `debug=2` per-thread text, Go's `debug=1` grouped
//! text, and a count profile. Symbolization happens here, long after the handlers ran.

use std::collections::HashMap;
use std::fmt::Write;

use super::ThreadDump;
use crate::labels::{self, LabelSetId};
use crate::profile::legacy_text::{object_offset, source_line, LegacyText};
use crate::profile::{Frame, Label, ProfileBuilder, Resolver};
use crate::symbolize::ProcessSymbols;

/// One thread (or async task) as the grouped forms see it.
pub(super) struct Entry<'a> {
    /// `thread` or `task`: the word the text forms use and the profile's label key.
    pub member: &'static str,
    /// Thread or task id.
    pub id: String,
    pub name: &'a str,
    /// What the thread is doing (`futex wait`, ...), where the profile has that.
    pub state: Option<String>,
    /// Leaf first.
    pub stack: Vec<Frame>,
    /// The labels active on the thread, or of the task's `Labels::instrument` wrapper.
    pub labels: LabelSetId,
}

fn symbols_for<'a>(stacks: impl Iterator<Item = &'a [Frame]>) -> ProcessSymbols {
    ProcessSymbols::resolve(stacks.flatten().filter_map(Frame::address))
}

/// `thread 4242 "name" [futex wait, 12 s]:` blocks, innermost frame first, then the tasks.
pub(super) fn full_text(dump: &ThreadDump) -> String {
    let stacks: Vec<Vec<Frame>> = dump.threads.iter().map(|t| dump.frames(t)).collect();
    let symbols = symbols_for(
        stacks
            .iter()
            .map(Vec::as_slice)
            .chain(dump.tasks.iter().flat_map(|tasks| tasks.stacks())),
    );
    let mut out = String::new();
    for (thread, stack) in dump.threads.iter().zip(&stacks) {
        let p = &thread.proc;
        let mut state = p.activity();
        if let Some(seconds) = p.waiting_seconds {
            let _ = write!(state, ", {seconds} s");
        }
        let _ = writeln!(out, "thread {} {:?} [{state}]:", p.tid, p.name);
        if let Some(labels) = dump.labels(thread).filter(|l| *l != LabelSetId::NONE) {
            let _ = writeln!(out, "labels: {}", labels::go_text(labels));
        }
        write_stack(&mut out, &symbols, stack, &p.wchan);
        out.push('\n');
    }
    if let Some(note) = dump.skipped_note() {
        let _ = writeln!(out, "# {note}\n");
    }
    if let Some(tasks) = &dump.tasks {
        out.push_str(&tasks.full_text(&|out, stack| write_stack(out, &symbols, stack, "")));
    }
    out
}

/// `function` / `\tfile:line` pairs, innermost first; `wchan` explains a stackless thread.
fn write_stack(out: &mut String, symbols: &ProcessSymbols, stack: &[Frame], wchan: &str) {
    for frame in stack {
        match frame {
            Frame::Address(address) => {
                let source = symbols.frames(*address);
                if source.is_empty() {
                    let _ = writeln!(out, "{address:#x}\n\t{}", object_offset(symbols, *address));
                }
                for f in source {
                    let _ = writeln!(out, "{}\n\t{}", f.function, source_line(f));
                }
            }
            Frame::Synthetic(name) if name == "[truncated]" => {
                out.push_str("...additional frames elided (the unwinder stopped here)...\n");
            }
            Frame::Synthetic(name) => {
                out.push_str(name);
                out.push('\n');
                if !wchan.is_empty() {
                    let _ = writeln!(out, "\tin the kernel at {wchan}");
                }
            }
        }
    }
}

/// Go's `debug=1` text: `N @ addr addr ...`, the threads, then one `#` line per frame.
pub(super) fn grouped_text(kind: &str, entries: &[Entry<'_>]) -> String {
    let symbols = symbols_for(entries.iter().map(|e| e.stack.as_slice()));
    // Keyed by member kind, labels and stack: threads and tasks never share a group, and
    // as in Go, one stack under other labels is another group.
    type Key<'e> = (&'e str, LabelSetId, &'e [Frame]);
    type Group<'e, 'a> = (Key<'e>, Vec<&'e Entry<'a>>);
    let mut groups: Vec<Group<'_, '_>> = Vec::new();
    let mut index: HashMap<Key<'_>, usize> = HashMap::new();
    for entry in entries {
        let key = (entry.member, entry.labels, entry.stack.as_slice());
        let i = *index.entry(key).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(entry);
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.1.len()));
    let mut out = LegacyText::new(&format!("{kind} profile: total {}", entries.len()), &symbols);
    for ((member, group_labels, stack), members) in groups {
        let threads: Vec<String> = members
            .iter()
            .map(|e| match &e.state {
                Some(state) => format!("{} {:?} [{state}]", e.id, e.name),
                None => format!("{} {:?}", e.id, e.name),
            })
            .collect();
        let mut notes = Vec::new();
        if group_labels != LabelSetId::NONE {
            // Go's form, right under the stack's count: `# labels: {"operation":"GetUser"}`.
            notes.push(format!("labels: {}", labels::go_text(group_labels)));
        }
        notes.push(format!("{member}s: {}", threads.join(", ")));
        out.stack(&members.len().to_string(), stack, &notes);
    }
    out.finish()
}

/// A `<kind>/count` profile with one sample per distinct stack, thread name and state.
pub(super) fn count_profile(kind: &str, entries: &[Entry<'_>]) -> ProfileBuilder {
    count_delta_profile(kind, &[], entries)
}

/// Like [`count_profile`] for `later`, less the counts of `earlier` (Go's `seconds=N` delta);
/// keys whose count did not change are left out, those that fell are negative.
pub(super) fn count_delta_profile(
    kind: &str,
    earlier: &[Entry<'_>],
    later: &[Entry<'_>],
) -> ProfileBuilder {
    let mut builder = ProfileBuilder::new(&[(kind, "count")], (kind, "count"), 1);
    // Stack, member kind, name, state and labels.
    type Key<'e> = (&'e [Frame], &'e str, &'e str, Option<&'e str>, LabelSetId);
    let mut counts: HashMap<Key<'_>, i64> = HashMap::new();
    let mut order = Vec::new();
    for (entries, sign) in [(later, 1), (earlier, -1)] {
        for e in entries {
            let key = (
                e.stack.as_slice(),
                e.member,
                e.name,
                e.state.as_deref(),
                e.labels,
            );
            let count = counts.entry(key).or_insert_with(|| {
                order.push(key);
                0
            });
            *count += sign;
        }
    }
    for key @ (stack, member, name, state, set) in order {
        if counts[&key] == 0 {
            continue;
        }
        let mut labels = labels::profile_labels(set, 0);
        labels.push(Label::str(member, name));
        if let Some(state) = state {
            labels.push(Label::str("state", state));
        }
        builder.add_sample(stack.to_vec(), vec![counts[&key]], labels);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_identical_stacks_and_counts_them() {
        let stack = vec![Frame::Address(0x10), Frame::Synthetic("[truncated]".into())];
        let entry = |id: &str, name, state: &str| Entry {
            member: "thread",
            id: id.into(),
            name,
            state: Some(state.into()),
            stack: stack.clone(),
            labels: LabelSetId::NONE,
        };
        let entries = [
            entry("1", "a", "futex wait"),
            entry("2", "b", "futex wait"),
            Entry {
                member: "thread",
                id: "3".into(),
                name: "c",
                state: None,
                stack: vec![Frame::Address(0x20)],
                labels: LabelSetId::NONE,
            },
        ];
        let text = grouped_text("goroutine", &entries);
        assert!(
            text.starts_with("goroutine profile: total 3\n2 @ 0x10\n"),
            "{text}"
        );
        assert!(text.contains("# threads: 1 \"a\" [futex wait], 2 \"b\" [futex wait]\n"));
        assert!(text.contains("#\t[truncated]\n"));
        assert!(text.contains("1 @ 0x20\n# threads: 3 \"c\"\n"));
        let profile = count_profile("goroutine", &entries).build(&crate::profile::NoSymbols);
        let values: Vec<i64> = profile.sample.iter().map(|s| s.value[0]).collect();
        assert_eq!(values, [1, 1, 1], "one sample per stack, name and state");
        assert_eq!(
            profile.sample[2].label.len(),
            1,
            "no state label where none is known"
        );
    }
}
