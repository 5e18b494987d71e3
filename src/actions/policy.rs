//! Who may do what, where: `[[actions.policies]]`. Nothing is allowed without a policy that
//! covers the action, the pipeline and the branch (all from the signed token) and admits the
//! person (by Slack user id, Slack user group, email or email domain). A pure decision: the
//! caller looks up group membership and emails first.

use super::action::Action;
use super::token::Grant;
use globset::{Glob, GlobSet, GlobSetBuilder};

/// Globs on a slug or branch; none means any.
#[derive(Debug, Clone, Default)]
pub struct Globs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl PartialEq for Globs {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Globs {
    /// Compiles `patterns`; the error names the one that does not compile.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for p in patterns {
            let glob = Glob::new(p).map_err(|e| format!("{p:?} is not a glob: {}", e.kind()))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        Ok(Self {
            patterns: patterns.to_vec(),
            set,
        })
    }

    /// True when no globs are given or one matches.
    pub fn allows(&self, value: &str) -> bool {
        self.patterns.is_empty() || self.set.is_match(value)
    }
}

/// One `[[actions.policies]]` entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Where it was written, for logs: `config.toml:42`.
    pub at: String,
    /// Pipelines it covers.
    pub pipelines: Globs,
    /// Branches it covers.
    pub branches: Globs,
    /// What it allows.
    pub allow: Vec<Action>,
    /// Slack user ids it admits.
    pub slack_users: Vec<String>,
    /// Slack user group ids whose members it admits.
    pub slack_usergroups: Vec<String>,
    /// Emails it admits (lower case).
    pub emails: Vec<String>,
    /// Email domains it admits (lower case): `acme.example` admits `maria@acme.example`, not
    /// `maria@eu.acme.example` (a subdomain can be a different tenant).
    pub email_domains: Vec<String>,
}

/// The person pressing, as far as they are known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Person {
    /// Their Slack user id, when pressed in Slack.
    pub slack_user: Option<String>,
    /// The user groups they are in, among those the covering policies name.
    pub usergroups: Vec<String>,
    /// Their email: Slack's profile email, or the one the OpenID Connect provider vouched for.
    pub email: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A policy covers it and admits the person; `at` names the policy.
    Allowed {
        /// Where the policy is written.
        at: String,
    },
    /// No policy covers this action on this pipeline and branch.
    NotCovered,
    /// Policies cover it, but none admits this person.
    NotAdmitted,
}

impl Policy {
    /// True when it allows `grant`'s action on its pipeline and branch.
    pub fn covers(&self, grant: &Grant) -> bool {
        self.allow.contains(&grant.action)
            && self.pipelines.allows(&grant.pipeline)
            && self.branches.allows(&grant.branch)
    }

    /// True when it admits `person`.
    pub fn admits(&self, person: &Person) -> bool {
        let slack = person
            .slack_user
            .as_deref()
            .is_some_and(|id| self.slack_users.iter().any(|u| u == id));
        let group = person
            .usergroups
            .iter()
            .any(|g| self.slack_usergroups.contains(g));
        let email = person.email.as_deref().map(str::to_ascii_lowercase);
        let by_email = email.as_deref().is_some_and(|e| {
            self.emails.iter().any(|x| x == e)
                || e.rsplit_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty() && self.email_domains.iter().any(|d| d == domain)
                })
        });
        slack || group || by_email
    }

    /// True when it can admit anyone at all.
    pub fn admits_anyone(&self) -> bool {
        !(self.slack_users.is_empty()
            && self.slack_usergroups.is_empty()
            && self.emails.is_empty()
            && self.email_domains.is_empty())
    }
}

/// The user groups worth looking up for `grant`: those named by policies that cover it.
pub fn usergroups_to_check<'a>(policies: &'a [Policy], grant: &Grant) -> Vec<&'a str> {
    let mut groups: Vec<&str> = policies
        .iter()
        .filter(|p| p.covers(grant))
        .flat_map(|p| p.slack_usergroups.iter().map(String::as_str))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// Whether `person` may carry out `grant`.
pub fn decide(policies: &[Policy], grant: &Grant, person: &Person) -> Decision {
    let covering: Vec<&Policy> = policies.iter().filter(|p| p.covers(grant)).collect();
    if covering.is_empty() {
        return Decision::NotCovered;
    }
    match covering.into_iter().find(|p| p.admits(person)) {
        Some(p) => Decision::Allowed { at: p.at.clone() },
        None => Decision::NotAdmitted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(p: &[&str]) -> Globs {
        Globs::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            at: "config.toml:40".into(),
            pipelines: globs(&["web-*"]),
            branches: globs(&["main"]),
            allow: vec![Action::RetryFailed, Action::Rebuild],
            slack_users: vec!["U024BE7LH".into()],
            slack_usergroups: vec!["S0614TZR7".into()],
            emails: vec!["ops@partner.example".into()],
            email_domains: vec!["acme.example".into()],
        }
    }

    fn grant(action: Action, pipeline: &str, branch: &str) -> Grant {
        Grant {
            action,
            org: "acme".into(),
            pipeline: pipeline.into(),
            build: 1,
            job: None,
            branch: branch.into(),
            route: "r".into(),
            destination: "d".into(),
            expires: 0,
            nonce: "n".into(),
        }
    }

    fn slack(id: &str) -> Person {
        Person {
            slack_user: Some(id.into()),
            ..Person::default()
        }
    }

    #[test]
    fn a_policy_covers_only_its_actions_pipelines_and_branches() {
        let p = [policy()];
        let maria = slack("U024BE7LH");
        assert!(matches!(
            decide(&p, &grant(Action::Rebuild, "web-app", "main"), &maria),
            Decision::Allowed { .. }
        ));
        for g in [
            grant(Action::Cancel, "web-app", "main"),
            grant(Action::Rebuild, "api", "main"),
            grant(Action::Rebuild, "web-app", "feature/x"),
        ] {
            assert_eq!(decide(&p, &g, &maria), Decision::NotCovered);
        }
        assert_eq!(
            decide(&[], &grant(Action::Rebuild, "web-app", "main"), &maria),
            Decision::NotCovered
        );
    }

    #[test]
    fn people_are_admitted_by_id_group_email_or_domain() {
        let p = [policy()];
        let g = grant(Action::RetryFailed, "web-frontend", "main");
        let group = Person {
            slack_user: Some("U1".into()),
            usergroups: vec!["S0614TZR7".into()],
            email: None,
        };
        let email = |e: &str| Person {
            email: Some(e.into()),
            ..Person::default()
        };
        assert!(matches!(decide(&p, &g, &group), Decision::Allowed { .. }));
        assert!(matches!(
            decide(&p, &g, &email("Maria@ACME.example")),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            decide(&p, &g, &email("ops@partner.example")),
            Decision::Allowed { .. }
        ));
        for outsider in [
            slack("U999"),
            email("maria@eu.acme.example"),
            email("maria@acme.example.evil"),
            email("@acme.example"),
            email("dev@partner.example"),
            Person::default(),
        ] {
            assert_eq!(
                decide(&p, &g, &outsider),
                Decision::NotAdmitted,
                "{outsider:?}"
            );
        }
    }

    #[test]
    fn only_groups_of_covering_policies_are_looked_up() {
        let mut other = policy();
        other.slack_usergroups = vec!["S_OTHER".into()];
        other.allow = vec![Action::Cancel];
        let p = [policy(), other];
        assert_eq!(
            usergroups_to_check(&p, &grant(Action::Rebuild, "web-app", "main")),
            vec!["S0614TZR7"]
        );
        assert!(usergroups_to_check(&p, &grant(Action::Rebuild, "api", "main")).is_empty());
    }
}
