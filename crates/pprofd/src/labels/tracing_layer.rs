//! Labels from `tracing` spans: a `tracing_subscriber::Layer` that makes chosen span fields
//! the thread's labels while the span is entered.

use std::cell::RefCell;
use std::fmt::Debug;

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::{set_current, set_current_task, tokio_task_id, Labels, CURRENT};

/// A `tracing_subscriber::Layer` that turns the span fields named in [`TracingLabels::new`]
/// into pprofd labels while the span is entered.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let subscriber = tracing_subscriber::registry().with(pprofd::TracingLabels::new(["operation"]));
/// tracing::subscriber::with_default(subscriber, || {
///     let span = tracing::info_span!("request", operation = "GetUser");
///     let _entered = span.enter(); // CPU samples and allocations here carry operation=GetUser
/// });
/// ```
///
/// With `tracing::Instrument` (`future.instrument(span)`), the span is entered on each poll,
/// so the labels follow the future across worker threads and leave with it. Spans nest: an
/// inner span's labels are added to the outer one's. A field recorded later
/// (`span.record("operation", name)`) counts from the span's next entry.
pub struct TracingLabels {
    fields: Box<[&'static str]>,
}

impl TracingLabels {
    /// A layer that labels with the span fields called `fields`.
    pub fn new(fields: impl IntoIterator<Item = &'static str>) -> TracingLabels {
        TracingLabels {
            fields: fields.into_iter().collect(),
        }
    }
}

/// The labels of one span, in its extensions.
struct SpanLabels {
    pairs: Vec<(&'static str, String)>,
    labels: Labels,
}

/// Collects the chosen fields of a span's values.
struct Chosen<'a> {
    fields: &'a [&'static str],
    pairs: Vec<(&'static str, String)>,
}

impl Chosen<'_> {
    fn keep(&mut self, field: &Field, value: String) {
        if self.fields.contains(&field.name()) {
            self.pairs.retain(|(key, _)| *key != field.name());
            self.pairs.push((field.name(), value));
        }
    }
}

impl Visit for Chosen<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if self.fields.contains(&field.name()) {
            self.keep(field, format!("{value:?}"));
        }
    }
}

thread_local! {
    /// For each span entered on this thread and not yet left, innermost last: the labels and
    /// task id to put back when it is left.
    static ENTERED: RefCell<Vec<(u32, Option<u64>)>> = const { RefCell::new(Vec::new()) };
}

impl<S> Layer<S> for TracingLabels
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut chosen = Chosen {
            fields: &self.fields,
            pairs: Vec::new(),
        };
        attrs.record(&mut chosen);
        if chosen.pairs.is_empty() {
            return;
        }
        if let Some(span) = ctx.span(id) {
            let labels = Labels::new(chosen.pairs.iter().cloned());
            span.extensions_mut().insert(SpanLabels {
                pairs: chosen.pairs,
                labels,
            });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let before = extensions
            .get_mut::<SpanLabels>()
            .map(|known| std::mem::take(&mut known.pairs))
            .unwrap_or_default();
        let mut chosen = Chosen {
            fields: &self.fields,
            pairs: before,
        };
        values.record(&mut chosen);
        if chosen.pairs.is_empty() {
            return;
        }
        let labels = Labels::new(chosen.pairs.iter().cloned());
        extensions.replace(SpanLabels {
            pairs: chosen.pairs,
            labels,
        });
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        // Every entry is pushed, labelled or not, so each exit pops its own entry.
        let labels = ctx
            .span(id)
            .and_then(|span| span.extensions().get::<SpanLabels>().map(|l| l.labels));
        let previous_task = labels.and_then(|_| tokio_task_id().map(set_current_task));
        let previous = match labels {
            Some(labels) => labels.activate(),
            None => CURRENT.with(|current| current.load(std::sync::atomic::Ordering::Relaxed)),
        };
        // `try_with`: during the thread's teardown the stack may be gone; nothing to restore then.
        let _ = ENTERED.try_with(|entered| entered.borrow_mut().push((previous, previous_task)));
    }

    fn on_exit(&self, _id: &Id, _ctx: Context<'_, S>) {
        let popped = ENTERED
            .try_with(|entered| entered.borrow_mut().pop())
            .ok()
            .flatten();
        if let Some((previous, previous_task)) = popped {
            set_current(previous);
            if let Some(task) = previous_task {
                set_current_task(task);
            }
        }
    }
}
