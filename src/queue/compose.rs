//! Rendering one delivery from the store: the body kept from an earlier attempt, or a fresh
//! rendering of its event (or of all a digest's events), with the message its destination
//! needs first (a Slack app's build message), ready to send.

use crate::actions::Buttons;
use crate::destination::{Destination, Parent};
use crate::event::{Event, VerifiedBody};
use crate::render::{Body, Renderer, TemplateData};
use crate::store::{Delivery, Store, StoreError, StoredEvent, now_ms};
use chrono::{TimeZone, Utc};
use prometheus::IntCounterVec;
use std::sync::Arc;
use thiserror::Error;

/// A message ready to send.
#[derive(Debug)]
pub struct Message {
    /// What to send.
    pub body: Body,
    /// The text to keep, when it was rendered now (a stored body is kept already).
    pub text: Option<String>,
    /// The message to post first, when the destination needs one.
    pub parent: Option<Parent>,
}

/// Why a delivery could not be made ready.
#[derive(Debug, Error)]
pub enum ComposeError {
    /// The store could not be read: leave the delivery as it is, and try again later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// It cannot be rendered, and never will be (a template that fails fails again).
    #[error("{0}")]
    Render(String),
}

/// Makes `row` ready for `destination` (`event` is its event, when intake gave it; `reads`
/// counts where a single message's event came from); `Ok(None)` when it is a digest that is
/// not due after all (an event joined it since it was picked).
pub async fn compose(
    store: &dyn Store,
    renderer: &Renderer,
    buttons: &Buttons,
    destination: &dyn Destination,
    reads: &IntCounterVec,
    row: &Delivery,
    event: Option<Arc<Event>>,
) -> Result<Option<Message>, ComposeError> {
    let kind = destination.kind();
    if let Some(text) = &row.body {
        let body = if kind.template_kind().is_json() {
            serde_json::from_str(text)
                .map(Body::Json)
                .map_err(|e| ComposeError::Render(format!("stored body is not JSON: {e}")))?
        } else {
            Body::Text(text.clone())
        };
        let parent = match wants_parent(destination, row) {
            true => parent(store, renderer, destination, row, None).await?,
            false => None,
        };
        return Ok(Some(Message {
            body,
            text: None,
            parent,
        }));
    }
    let now = Utc::now();
    let wants_parent = wants_parent(destination, row);
    let (rendered, single) = if row.grouped {
        // Closed first, through the store, so no event joins after its events are read.
        if !store.close_group(row.id, now_ms()).await? {
            return Ok(None);
        }
        let events = store
            .group_events(row.id)
            .await?
            .into_iter()
            .map(to_event)
            .collect::<Result<Vec<Event>, _>>()?;
        let rendered = kind.render_group(renderer, row.template.as_deref(), &events, now);
        (rendered, None)
    } else {
        let event = single_event(store, reads, row, event).await?;
        // Selected while the event is at hand: it may be given up to the template data.
        let template = renderer.select(kind.template_kind(), row.template.as_deref(), &event);
        let actions =
            buttons.for_event(&event, &row.route, destination.name(), kind.template_kind());
        // The event no one else needs gives its payload to the template data, where a copy
        // of the whole JSON tree was made for every message.
        let (mut data, event) = if wants_parent {
            (TemplateData::new(&event, now), Some(event))
        } else {
            match Arc::try_unwrap(event) {
                Ok(owned) => (TemplateData::from_event(owned, now), None),
                Err(shared) => (TemplateData::new(&shared, now), None),
            }
        };
        data.set_actions(&actions);
        let rendered = template.and_then(|t| kind.render_selected(renderer, t, &data));
        (rendered, event)
    };
    let rendered = rendered.map_err(|e| ComposeError::Render(e.to_string()))?;
    let text = match &rendered.body {
        Body::Text(t) => t.clone(),
        Body::Json(v) => v.to_string(),
    };
    let parent = match single {
        Some(event) => parent(store, renderer, destination, row, Some(event)).await?,
        None => None,
    };
    Ok(Some(Message {
        body: rendered.body,
        text: Some(text),
        parent,
    }))
}

/// The message `destination` wants posted before `row`'s, rendered; `event` is the row's
/// event when it was parsed already. A parent that cannot be rendered is left out: the
/// message itself still goes.
async fn parent(
    store: &dyn Store,
    renderer: &Renderer,
    destination: &dyn Destination,
    row: &Delivery,
    event: Option<Arc<Event>>,
) -> Result<Option<Parent>, ComposeError> {
    let event = match event {
        Some(event) => event,
        None => match to_event(stored_event(store, row).await?) {
            Ok(event) => Arc::new(event),
            Err(_) => return Ok(None),
        },
    };
    let Some(first) = destination.parent(&event) else {
        return Ok(None);
    };
    let data = TemplateData::new(&first, Utc::now());
    Ok(destination
        .kind()
        .render_event(renderer, None, &first, &data)
        .ok()
        .map(|rendered| Parent {
            event_name: first.name().to_string(),
            body: rendered.body,
        }))
}

/// A digest has no single build to hang under.
fn wants_parent(destination: &dyn Destination, row: &Delivery) -> bool {
    !row.grouped && destination.wants_parent(&row.event_name, row.thread_key.is_some())
}

/// A single message's event: the one intake parsed, when it handed it over, else the stored
/// body parsed again; counted in `reads` by where it came from.
async fn single_event(
    store: &dyn Store,
    reads: &IntCounterVec,
    row: &Delivery,
    given: Option<Arc<Event>>,
) -> Result<Arc<Event>, ComposeError> {
    if let Some(event) = given {
        reads.with_label_values(&["memory"]).inc();
        return Ok(event);
    }
    reads.with_label_values(&["store"]).inc();
    Ok(Arc::new(to_event(stored_event(store, row).await?)?))
}

async fn stored_event(store: &dyn Store, row: &Delivery) -> Result<StoredEvent, StoreError> {
    match &row.event {
        Some(event) => Ok(event.clone()),
        None => store.event(row.event_id).await,
    }
}

/// A stored event, parsed again (it was verified when it arrived), with its id and transition.
fn to_event(stored: StoredEvent) -> Result<Event, ComposeError> {
    let received = Utc
        .timestamp_millis_opt(stored.received_at)
        .single()
        .unwrap_or_else(Utc::now);
    let mut event = Event::parse(
        &VerifiedBody::trusted(stored.body),
        Some(&stored.name),
        received,
    )
    .map_err(|e| ComposeError::Render(e.to_string()))?;
    event.set_transition(stored.transition);
    event.set_id(stored.id);
    Ok(event)
}
