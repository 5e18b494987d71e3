//! Mentions: the `[[people]]` table, and the `mention` helper that turns a mapped person into a
//! real Slack or Teams mention.
//!
//! This is the only way a mention reaches a message: payload text is always escaped, so only
//! people the operator listed can be pinged. An unmapped person is shown as a plain name.

use super::TemplateKind;
use super::escape::{json_content, teams_text, template_value};
use handlebars::{Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// One person who can be mentioned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Person {
    /// How to show them (Teams needs a name inside its mention).
    pub name: Option<String>,
    /// Slack member id (`U…` or `W…`).
    pub slack: Option<String>,
    /// Teams user principal name (usually their email).
    pub teams: Option<String>,
    /// Buildkite user id: who unblocks when they press an unblock button.
    pub buildkite_id: Option<String>,
}

/// Everyone in `[[people]]`, found by email or Buildkite user name (case-insensitive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct People {
    people: Vec<Person>,
    index: HashMap<String, usize>,
}

impl People {
    /// Adds a person known by `keys`; returns the first key another person already has.
    pub fn add(&mut self, keys: &[String], person: Person) -> Result<(), String> {
        if let Some(taken) = keys
            .iter()
            .find(|k| self.index.contains_key(&k.to_lowercase()))
        {
            return Err(taken.clone());
        }
        self.people.push(person);
        for k in keys {
            self.index.insert(k.to_lowercase(), self.people.len() - 1);
        }
        Ok(())
    }

    /// The person known by an email or user name.
    pub fn find(&self, key: &str) -> Option<&Person> {
        self.index
            .get(&key.trim().to_lowercase())
            .map(|&i| &self.people[i])
    }

    /// How many people are listed.
    pub fn len(&self) -> usize {
        self.people.len()
    }

    /// True when nobody is listed.
    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }
}

thread_local! {
    /// Teams mention entities made while rendering one card on this thread.
    static ENTITIES: RefCell<Vec<Value>> = const { RefCell::new(Vec::new()) };
}

/// Runs a render, collecting the Teams mention entities its `mention` helpers made.
pub fn collecting<T>(render: impl FnOnce() -> T) -> (T, Vec<Value>) {
    ENTITIES.with(|e| e.borrow_mut().clear());
    let out = render();
    (out, ENTITIES.with(|e| std::mem::take(&mut *e.borrow_mut())))
}

/// Puts the entities into the card's `msteams.entities`, as Teams needs to resolve `<at>` tags.
pub fn add_entities(body: &mut Value, entities: Vec<Value>) {
    if entities.is_empty() {
        return;
    }
    let Some(card) = body
        .pointer_mut("/attachments/0/content")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let msteams = card.entry("msteams").or_insert_with(|| json!({}));
    if let Some(map) = msteams.as_object_mut() {
        let list = map.entry("entities").or_insert_with(|| json!([]));
        if let Some(list) = list.as_array_mut() {
            for e in entities {
                if !list.contains(&e) {
                    list.push(e);
                }
            }
        }
    }
}

/// `{{mention}}`: the build's author. `{{mention who}}`: an email or user name. `{{mention who
/// name}}`: with the name to show when `who` is not mapped.
pub struct MentionHelper {
    /// Which kind of template it renders for.
    pub kind: TemplateKind,
    /// The `[[people]]` table.
    pub people: Arc<People>,
}

impl HelperDef for MentionHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        // Paths resolve against the current block, so inside a digest's `#each` the author is
        // that event's.
        let at = |path: &str| {
            rc.evaluate(ctx, path)
                .ok()
                .and_then(|v| v.as_json().as_str().map(str::trim).map(str::to_string))
                .filter(|s| !s.is_empty())
        };
        let param = |i: usize| {
            h.param(i)
                .and_then(|p| p.value().as_str())
                .map(str::to_string)
        };
        let (keys, fallback) = match h.param(0) {
            // Given someone (even a missing field): that person, never the author instead.
            Some(_) => {
                let who = param(0);
                let fallback = param(1)
                    .or_else(|| who.clone())
                    .unwrap_or_else(|| "unknown".into());
                (who.into_iter().collect(), fallback)
            }
            None => (
                [
                    "build.author.email",
                    "build.creator.email",
                    "build.author.username",
                ]
                .iter()
                .filter_map(|p| at(p))
                .collect::<Vec<_>>(),
                at("kb.build.author").unwrap_or_else(|| "unknown".into()),
            ),
        };
        let person = keys.iter().find_map(|k| self.people.find(k));
        // The helper writes raw output (so a real mention survives), escaping all else itself.
        let text = match (self.kind, person) {
            (
                TemplateKind::Slack,
                Some(Person {
                    slack: Some(id), ..
                }),
            ) => format!("<@{id}>"),
            (
                TemplateKind::Teams,
                Some(Person {
                    teams: Some(upn),
                    name,
                    ..
                }),
            ) => {
                let shown = teams_text(name.as_deref().unwrap_or(&fallback));
                let tag = format!("<at>{shown}</at>");
                let entity = json!({"type": "mention", "text": tag, "mentioned": {"id": upn, "name": shown}});
                ENTITIES.with(|e| e.borrow_mut().push(entity));
                json_content(&tag)
            }
            (TemplateKind::Console | TemplateKind::Webhook, _) => template_value(
                self.kind,
                person.and_then(|p| p.name.as_deref()).unwrap_or(&fallback),
            ),
            (kind, _) => template_value(kind, &fallback),
        };
        out.write(&text)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn people() -> People {
        let mut p = People::default();
        p.add(
            &["Maria.Lopez@acme.example".into(), "mlopez".into()],
            Person {
                name: Some("Maria López".into()),
                slack: Some("U024BE7LH".into()),
                teams: Some("maria.lopez@acme.example".into()),
                buildkite_id: None,
            },
        )
        .unwrap();
        p
    }

    #[test]
    fn finds_people_by_email_or_user_name_in_any_case() {
        let p = people();
        assert!(p.find("maria.lopez@ACME.example").is_some());
        assert!(p.find("MLOPEZ").is_some());
        assert!(p.find("someone@else").is_none());
        let mut dup = people();
        assert_eq!(
            dup.add(&["mlopez".into()], Person::default()),
            Err("mlopez".into())
        );
    }

    fn render(template: &str, data: Value) -> String {
        let mut hb = Handlebars::new();
        hb.register_escape_fn(|s| template_value(TemplateKind::Slack, s));
        hb.register_helper(
            "mention",
            Box::new(MentionHelper {
                kind: TemplateKind::Slack,
                people: Arc::new(people()),
            }),
        );
        hb.render_template(template, &data).unwrap()
    }

    #[test]
    fn mentions_whom_it_is_asked_and_in_a_digest_each_events_author() {
        let maria = json!({"build": {"author": {"email": "maria.lopez@acme.example"}}, "kb": {"build": {"author": "Maria"}}});
        let other =
            json!({"build": {"author": {"email": "x@y"}}, "kb": {"build": {"author": "X <@U1>"}}});
        assert_eq!(render("{{mention}}", maria.clone()), "<@U024BE7LH>");
        assert_eq!(render("{{mention}}", other.clone()), "X &lt;@U1&gt;");
        assert_eq!(
            render("{{mention \"mlopez\"}}", other.clone()),
            "<@U024BE7LH>"
        );
        // Asked about someone who is not there: never the author instead.
        assert_eq!(
            render("{{mention build.creator.email}}", maria.clone()),
            "unknown"
        );
        let digest = json!({"build": {"author": {"email": "x@y"}}, "kb": {"build": {"author": "X"}}, "items": [other, maria]});
        assert_eq!(
            render("{{#each items}}{{mention}};{{/each}}", digest),
            "X &lt;@U1&gt;;<@U024BE7LH>;"
        );
    }

    #[test]
    fn entities_go_into_the_card() {
        let mut body = json!({"type": "message", "attachments": [{"content": {"type": "AdaptiveCard", "msteams": {"width": "Full"}}}]});
        let e = json!({"type": "mention", "text": "<at>A</at>", "mentioned": {"id": "a@x", "name": "A"}});
        add_entities(&mut body, vec![e.clone(), e.clone()]);
        assert_eq!(
            body["attachments"][0]["content"]["msteams"]["entities"],
            json!([e])
        );
        assert_eq!(
            body["attachments"][0]["content"]["msteams"]["width"],
            "Full"
        );
    }
}
