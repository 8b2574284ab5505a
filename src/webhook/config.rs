//! The webhook configurations as data: which operations on which resources go to kube-pim's
//! admission webhook. Used by the test environment (URL on loopback) and mirrored by the chart
//! (a Service). `failurePolicy: Fail` (fail closed, invariant 5), `sideEffects: None` (dry-run
//! requests reach the webhook, which has no side effects), and a matchCondition that leaves
//! the operator's own writes out, so revocation never depends on the webhook.

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
        ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
    },
};
use kube::api::ObjectMeta;

use crate::policies::Operator;

/// The name of both configurations.
pub const NAME: &str = "kube-pim";

fn rule(ops: &[&str], resources: &[&str]) -> RuleWithOperations {
    let s = |v: &[&str]| Some(v.iter().map(|x| x.to_string()).collect());
    RuleWithOperations {
        api_groups: s(&["kubepim.io"]),
        api_versions: s(&["v1alpha1"]),
        operations: s(ops),
        resources: s(resources),
        scope: Some("*".into()),
    }
}

/// Where the apiserver reaches the webhook: a URL (local control plane) with the CA bundle.
pub fn url_client(base_url: &str, path: &str, ca_pem: &str) -> WebhookClientConfig {
    WebhookClientConfig {
        url: Some(format!("{base_url}{path}")),
        ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
        service: None,
    }
}

fn not_operator(operator: &Operator) -> Option<Vec<MatchCondition>> {
    Some(vec![MatchCondition {
        name: "not-the-operator".into(),
        expression: operator.not_operator_expression(),
    }])
}

fn meta() -> ObjectMeta {
    ObjectMeta {
        name: Some(NAME.into()),
        labels: Some([("app.kubernetes.io/name".to_string(), "kube-pim".to_string())].into()),
        ..Default::default()
    }
}

/// Mutation: stamping the requester (request CREATE), an approver's identity and time
/// (request status UPDATE), and who wrote an assignment (assignment CREATE/UPDATE).
pub fn mutating(client: WebhookClientConfig, operator: &Operator) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: meta(),
        webhooks: Some(vec![MutatingWebhook {
            name: "mutate.kubepim.io".into(),
            client_config: client,
            rules: Some(vec![
                rule(&["CREATE", "UPDATE"], &["activationrequests"]),
                rule(&["UPDATE"], &["activationrequests/status"]),
                rule(&["CREATE", "UPDATE"], &["eligibleassignments"]),
            ]),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            timeout_seconds: Some(10),
            reinvocation_policy: Some("IfNeeded".into()),
            match_conditions: not_operator(operator),
            ..Default::default()
        }]),
    }
}

/// Validation: every write to kube-pim's resources, including request status and DELETE.
pub fn validating(
    client: WebhookClientConfig,
    operator: &Operator,
) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: meta(),
        webhooks: Some(vec![ValidatingWebhook {
            name: "validate.kubepim.io".into(),
            client_config: client,
            rules: Some(vec![
                rule(
                    &["CREATE", "UPDATE", "DELETE"],
                    &["activationrequests", "eligibleassignments", "rolesettings"],
                ),
                // `*` or a bare resource does not match subresources: list status explicitly.
                rule(&["UPDATE"], &["activationrequests/status"]),
            ]),
            admission_review_versions: vec!["v1".into()],
            // It records admitted policy writes on the audit stream, never for dry runs.
            side_effects: "NoneOnDryRun".into(),
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            timeout_seconds: Some(10),
            match_conditions: not_operator(operator),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_closed_no_side_effects_and_the_operator_excluded() {
        let c = url_client("https://127.0.0.1:9443", "/validate", "CA");
        let op = |u: &str| Operator {
            username: u.into(),
            require_pod_bound_token: false,
        };
        let v = validating(
            c.clone(),
            &op("system:serviceaccount:kube-pim-system:kube-pim"),
        );
        let w = &v.webhooks.unwrap()[0];
        assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(w.side_effects, "NoneOnDryRun");
        assert_eq!(
            w.match_conditions.as_ref().unwrap()[0].expression,
            "request.userInfo.username != \"system:serviceaccount:kube-pim-system:kube-pim\""
        );
        let resources: Vec<String> = w
            .rules
            .iter()
            .flatten()
            .flat_map(|r| r.resources.clone().unwrap())
            .collect();
        assert!(resources.contains(&"activationrequests/status".to_string()));
        let ops: Vec<String> = w.rules.as_ref().unwrap()[0].operations.clone().unwrap();
        assert_eq!(ops, ["CREATE", "UPDATE", "DELETE"]);
        let m = mutating(c, &op("op"));
        assert_eq!(
            m.webhooks.unwrap()[0].failure_policy.as_deref(),
            Some("Fail")
        );
        assert_eq!(
            not_operator(&op("a\"b")).unwrap()[0].expression,
            "request.userInfo.username != \"a\\\"b\""
        );
    }
}
