//! pprof's `drop_frames` / `keep_frames`: the frames a profile asks its readers to cut, applied
//! exactly as google/pprof's `Profile.RemoveUninteresting` and `Prune` do
//! (`profile/prune.go`), so that pprofd's own views, speedscope (which reads the stacks as
//! they are) and `go tool pprof` (which prunes after symbolizing) show the same stacks.
//!
//! The rules, from pprof: a function matches when its name, cut at the first `(` (an argument
//! list), fully matches `drop_frames` and not `keep_frames`. Within a location, the inline
//! chain is scanned from the outermost function; at the first match, that frame and the ones
//! inlined into it are removed, and a location whose outermost function matches is removed
//! whole. Then each sample's stack is scanned from the root: frames before the first one that
//! does not match are kept whatever they are (so a stack of nothing but matching frames stays
//! whole), and at the first matching location after it the stack is cut there.

use std::collections::HashSet;

use regex_lite::Regex;

use super::proto;

/// Applies `profile`'s `drop_frames` (and `keep_frames`) as pprof does when it reads the
/// profile; nothing happens when `drop_frames` is empty. The error names a pattern that is not
/// a valid regular expression.
pub fn remove_uninteresting_frames(profile: &mut proto::Profile) -> Result<(), String> {
    let string = |i: i64| {
        profile
            .string_table
            .get(i as usize)
            .cloned()
            .unwrap_or_default()
    };
    let (drop, keep) = (string(profile.drop_frames), string(profile.keep_frames));
    if drop.is_empty() {
        return Ok(());
    }
    let full_match = |pattern: &str| {
        Regex::new(&format!("^({pattern})$"))
            .map_err(|e| format!("drop_frames/keep_frames {pattern:?} is not a valid pattern: {e}"))
    };
    let drop = full_match(&drop)?;
    let keep = if keep.is_empty() {
        None
    } else {
        Some(full_match(&keep)?)
    };
    prune(profile, |name| {
        drop.is_match(name) && !keep.as_ref().is_some_and(|k| k.is_match(name))
    });
    Ok(())
}

/// pprof's `Prune` with `uninteresting` deciding on simplified function names.
fn prune(profile: &mut proto::Profile, uninteresting: impl Fn(&str) -> bool) {
    let names: std::collections::HashMap<u64, &str> = profile
        .function
        .iter()
        .map(|f| {
            let name = profile
                .string_table
                .get(f.name as usize)
                .map_or("", String::as_str);
            (f.id, name)
        })
        .collect();
    let mut pruned = HashSet::new();
    let mut pruned_beneath = HashSet::new();
    for location in &mut profile.location {
        let first_match = location.line.iter().rposition(|line| {
            names
                .get(&line.function_id)
                .is_some_and(|name| !name.is_empty() && uninteresting(simplify(name)))
        });
        if let Some(i) = first_match {
            pruned_beneath.insert(location.id);
            if i == location.line.len() - 1 {
                pruned.insert(location.id);
            } else {
                location.line.drain(..=i);
            }
        }
    }
    for sample in &mut profile.sample {
        let mut found_user_frame = false;
        for i in (0..sample.location_id.len()).rev() {
            let id = sample.location_id[i];
            let (whole, beneath) = (pruned.contains(&id), pruned_beneath.contains(&id));
            if !whole && !beneath {
                found_user_frame = true;
                continue;
            }
            if !found_user_frame {
                continue;
            }
            if whole {
                sample.location_id.drain(..=i);
            } else {
                sample.location_id.drain(..i);
            }
            break;
        }
    }
}

/// pprof's `simplifyFunc`: the name without a leading `.` and cut at the first `(` that does
/// not start `(anonymous namespace)` or `operator()`.
fn simplify(name: &str) -> &str {
    const RESERVED: [&str; 2] = ["(anonymous namespace)", "operator()"];
    let name = name.strip_prefix('.').unwrap_or(name);
    // pprof scans for the leftmost of the reserved names and `(`, skipping reserved ones.
    let mut at = 0;
    while at < name.len() {
        let rest = &name[at..];
        if let Some(reserved) = RESERVED.iter().find(|r| rest.starts_with(**r)) {
            at += reserved.len();
        } else if rest.starts_with('(') {
            return &name[..at];
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::proto::{Function, Line, Location, Profile, Sample};

    /// A profile of one sample whose stack holds one location per entry of `stack` (leaf
    /// first), each with the inline chain given (innermost first).
    fn profile(stack: &[&[&str]], drop: &str) -> Profile {
        let mut p = Profile {
            string_table: vec![String::new(), drop.to_string()],
            drop_frames: 1,
            ..Default::default()
        };
        let mut ids = Vec::new();
        for (l, chain) in stack.iter().enumerate() {
            let mut lines = Vec::new();
            for name in chain.iter() {
                p.string_table.push(name.to_string());
                let id = p.function.len() as u64 + 1;
                p.function.push(Function {
                    id,
                    name: p.string_table.len() as i64 - 1,
                    ..Default::default()
                });
                lines.push(Line {
                    function_id: id,
                    ..Default::default()
                });
            }
            p.location.push(Location {
                id: l as u64 + 1,
                line: lines,
                ..Default::default()
            });
            ids.push(l as u64 + 1);
        }
        p.sample.push(Sample {
            location_id: ids,
            value: vec![1],
            ..Default::default()
        });
        p
    }

    fn owned(names: Vec<&str>) -> Vec<String> {
        names.into_iter().map(String::from).collect()
    }

    /// The stack after pruning, as inline chains of names.
    fn stack(p: &Profile) -> Vec<Vec<String>> {
        p.sample[0]
            .location_id
            .iter()
            .map(|id| {
                let l = p.location.iter().find(|l| l.id == *id).unwrap();
                l.line
                    .iter()
                    .map(|line| {
                        let f = &p.function[line.function_id as usize - 1];
                        p.string_table[f.name as usize].clone()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn cuts_at_the_first_match_after_the_first_user_frame_from_the_root() {
        let mut p = profile(
            &[
                &["alloc::alloc::alloc"],
                &[
                    "alloc::raw_vec::grow",
                    "alloc::vec::Vec::push",
                    "app::register",
                ],
                &["app::serve"],
                &["alloc::vec::Vec::push"],
                &["app::main"],
                &["alloc::start"],
            ],
            "alloc::.*",
        );
        remove_uninteresting_frames(&mut p).unwrap();
        // Root frames that match before any user frame stay; the first match after one cuts
        // the stack, whatever lies beneath it; the inline chain of the leaf location loses
        // the matching frames and those inlined into them.
        assert_eq!(
            stack(&p),
            [vec!["app::main"], vec!["alloc::start"]].map(owned)
        );
        let mut p = profile(
            &[
                &["alloc::alloc::alloc"],
                &[
                    "alloc::raw_vec::grow",
                    "alloc::vec::Vec::push",
                    "app::register",
                ],
                &["app::main"],
                &["alloc::start"],
            ],
            "alloc::.*",
        );
        remove_uninteresting_frames(&mut p).unwrap();
        assert_eq!(
            stack(&p),
            [
                vec!["app::register"],
                vec!["app::main"],
                vec!["alloc::start"]
            ]
            .map(owned)
        );
    }

    #[test]
    fn a_stack_of_matching_frames_only_is_kept_and_keep_frames_wins() {
        let mut p = profile(&[&["alloc::a"], &["alloc::b"]], "alloc::.*");
        remove_uninteresting_frames(&mut p).unwrap();
        assert_eq!(stack(&p).len(), 2);
        let mut p = profile(
            &[&["alloc::a"], &["alloc::keep"], &["app::main"]],
            "alloc::.*",
        );
        p.string_table.push("alloc::keep".into());
        p.keep_frames = p.string_table.len() as i64 - 1;
        remove_uninteresting_frames(&mut p).unwrap();
        assert_eq!(
            stack(&p),
            [vec!["alloc::keep".to_string()], vec!["app::main".into()]]
        );
    }

    #[test]
    fn names_are_cut_at_their_argument_list_and_matched_whole() {
        assert_eq!(simplify("f(int)"), "f");
        assert_eq!(simplify(".f(int)"), "f");
        assert_eq!(
            simplify("(anonymous namespace)::f(int)"),
            "(anonymous namespace)::f"
        );
        assert_eq!(simplify("A::operator()(int)"), "A::operator()");
        assert_eq!(
            simplify("<&dyn Fn<(), Output = i32> as FnOnce<()>>::call_once"),
            "<&dyn Fn<"
        );
        let mut p = profile(&[&["xalloc::a"], &["app::main"]], "alloc::.*");
        remove_uninteresting_frames(&mut p).unwrap();
        assert_eq!(stack(&p).len(), 2, "a partial match is no match");
        let mut p = profile(&[&["a"]], "(");
        assert!(remove_uninteresting_frames(&mut p).is_err());
    }
}
