//! DeleteTopics: by name (v1–5, `topic_names`) or by name or topic id (v6,
//! `topics`). Each topic is deleted on its own. A name or id given twice, an entry
//! with both or neither, and a name that resolves to an id also given are refused
//! with INVALID_REQUEST, as Kafka's `ControllerApis.deleteTopics` does.

use std::collections::{HashMap, HashSet};

use ferry_core::broker::validate_topic_name;
use ferry_core::{Broker, CoreError};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::dispatch::RequestContext;
use crate::errors::kafka_error;

/// One entry of the request.
#[derive(Debug, Clone)]
enum TopicRef {
    Name(String),
    Id(Uuid),
    /// Refused for its shape: (name, id, message).
    Malformed(Option<String>, Uuid, &'static str),
}

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let refs: Vec<TopicRef> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| match (t.name, t.topic_id.is_nil()) {
                (None, true) => TopicRef::Malformed(
                    None,
                    Uuid::nil(),
                    "Neither topic name nor id were specified.",
                ),
                (None, false) => TopicRef::Id(t.topic_id),
                (Some(name), true) => TopicRef::Name(name.0.to_string()),
                (Some(name), false) => TopicRef::Malformed(
                    Some(name.0.to_string()),
                    t.topic_id,
                    "You may not specify both topic name and topic id.",
                ),
            })
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| TopicRef::Name(n.0.to_string()))
            .collect()
    };
    let broker = ctx.broker.clone();
    let (peer, client_id) = (ctx.peer, ctx.client_id.clone());
    // Deleting is a metadata fsync and the removal of the partitions' files.
    let work = move || {
        let responses = delete_all(&broker, refs);
        for r in responses.iter().filter(|r| r.error_code == 0) {
            tracing::info!(%peer, %client_id, topic = ?r.name.as_ref().map(|n| n.0.as_str()), "topic deleted on request");
        }
        responses
    };
    let responses = match tokio::task::spawn_blocking(work).await {
        Ok(responses) => responses,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    DeleteTopicsResponse::default().with_responses(responses)
}

fn delete_all(broker: &Broker, refs: Vec<TopicRef>) -> Vec<DeletableTopicResult> {
    let image = broker.image();
    let mut name_count: HashMap<&str, usize> = HashMap::new();
    let mut id_count: HashMap<Uuid, usize> = HashMap::new();
    for r in &refs {
        match r {
            TopicRef::Name(n) => *name_count.entry(n.as_str()).or_default() += 1,
            TopicRef::Id(id) => *id_count.entry(*id).or_default() += 1,
            TopicRef::Malformed(..) => {}
        }
    }
    // Ids that are also reached through a name in the same request: both refused.
    let named_ids: HashSet<Uuid> = name_count
        .keys()
        .filter_map(|n| image.topic(n).map(|t| t.topic_id))
        .collect();
    let conflicting: HashSet<Uuid> = id_count
        .iter()
        .filter(|(id, n)| **n == 1 && named_ids.contains(id))
        .map(|(id, _)| *id)
        .collect();

    let mut reported_names = HashSet::new();
    let mut reported_ids = HashSet::new();
    let mut results = Vec::with_capacity(refs.len());
    for r in &refs {
        let result = match r {
            TopicRef::Malformed(name, id, message) => result(
                name.as_deref(),
                *id,
                Err((ResponseError::InvalidRequest, message.to_string())),
            ),
            TopicRef::Name(name) if name_count.get(name.as_str()).is_some_and(|n| *n > 1) => {
                if !reported_names.insert(name.as_str()) {
                    continue;
                }
                result(
                    Some(name),
                    Uuid::nil(),
                    Err((
                        ResponseError::InvalidRequest,
                        "Duplicate topic name.".into(),
                    )),
                )
            }
            TopicRef::Id(id)
                if id_count.get(id).is_some_and(|n| *n > 1) || conflicting.contains(id) =>
            {
                if !reported_ids.insert(*id) {
                    continue;
                }
                result(
                    None,
                    *id,
                    Err((ResponseError::InvalidRequest, "Duplicate topic id.".into())),
                )
            }
            TopicRef::Id(id) => match image.topic_by_id(id) {
                None => result(None, *id, Err(core_error(&CoreError::UnknownTopicId))),
                Some(topic) => result(
                    Some(&topic.name),
                    *id,
                    broker
                        .delete_topic(*id)
                        .map(|_| ())
                        .map_err(|e| core_error(&e)),
                ),
            },
            TopicRef::Name(name) => {
                let found = validate_topic_name(name)
                    .and_then(|()| image.topic(name).ok_or(CoreError::UnknownTopicOrPartition))
                    .map_err(|e| core_error(&e));
                match found {
                    Err(e) => result(Some(name), Uuid::nil(), Err(e)),
                    Ok(topic) if conflicting.contains(&topic.topic_id) => result(
                        Some(name),
                        topic.topic_id,
                        Err((
                            ResponseError::InvalidRequest,
                            "The provided topic name maps to an ID that was already supplied."
                                .into(),
                        )),
                    ),
                    Ok(topic) => result(
                        Some(name),
                        topic.topic_id,
                        broker
                            .delete_topic(topic.topic_id)
                            .map(|_| ())
                            .map_err(|e| core_error(&e)),
                    ),
                }
            }
        };
        results.push(result);
    }
    results
}

fn core_error(e: &CoreError) -> (ResponseError, String) {
    (kafka_error(e), e.to_string())
}

fn result(
    name: Option<&str>,
    topic_id: Uuid,
    outcome: Result<(), (ResponseError, String)>,
) -> DeletableTopicResult {
    let r = DeletableTopicResult::default()
        .with_name(name.map(|n| TopicName(StrBytes::from_string(n.to_string()))))
        .with_topic_id(topic_id);
    match outcome {
        Ok(()) => r,
        Err((error, message)) => r
            .with_error_code(error.code())
            .with_error_message(Some(StrBytes::from_string(message))),
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;

    use super::*;
    use crate::handlers::create_topics::test_support::*;

    fn by_name(names: &[&str]) -> DeleteTopicsRequest {
        DeleteTopicsRequest::default()
            .with_topic_names(names.iter().map(|n| topic_name(n)).collect())
            .with_timeout_ms(5000)
    }

    fn by_state(states: Vec<DeleteTopicState>) -> DeleteTopicsRequest {
        DeleteTopicsRequest::default()
            .with_topics(states)
            .with_timeout_ms(5000)
    }

    fn codes(resp: &DeleteTopicsResponse) -> Vec<i16> {
        resp.responses.iter().map(|r| r.error_code).collect()
    }

    #[tokio::test]
    async fn deletes_only_the_named_topic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(
            &ctx,
            vec![creatable("keep", 2, &[]), creatable("drop", 2, &[])],
        )
        .await;
        let resp = handle(&ctx, 5, by_name(&["drop"])).await;
        assert_encodes(&resp, 5);
        assert_eq!(codes(&resp), vec![0]);
        assert_eq!(
            resp.responses[0].name.as_ref().map(|n| n.0.as_str()),
            Some("drop")
        );
        let image = ctx.broker.image();
        assert!(image.topic("drop").is_none());
        assert_eq!(image.topic("keep").map(|t| t.partitions.len()), Some(2));
        assert!(ctx
            .broker
            .partition(&ferry_core::TopicPartition::new("keep", 1))
            .is_some());
        assert!(ctx
            .broker
            .partition(&ferry_core::TopicPartition::new("drop", 0))
            .is_none());
        assert!(!dir.path().join("drop-0").exists());
    }

    #[tokio::test]
    async fn unknown_and_invalid_names_and_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(&ctx, vec![creatable("a", 1, &[])]).await;
        let resp = handle(&ctx, 1, by_name(&["missing", "bad/name", "a", "a"])).await;
        assert_encodes(&resp, 1);
        assert_eq!(
            codes(&resp),
            vec![
                ResponseError::UnknownTopicOrPartition.code(),
                ResponseError::InvalidTopicException.code(),
                ResponseError::InvalidRequest.code(),
            ]
        );
        assert!(ctx.broker.image().topic("a").is_some());
    }

    #[tokio::test]
    async fn v6_deletes_by_topic_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(
            &ctx,
            vec![
                creatable("x", 1, &[]),
                creatable("y", 1, &[]),
                creatable("z", 1, &[]),
            ],
        )
        .await;
        let image = ctx.broker.image();
        let id_of = |n: &str| image.topic(n).map(|t| t.topic_id).expect("topic");
        let (x, y) = (id_of("x"), id_of("y"));
        let states = vec![
            DeleteTopicState::default().with_topic_id(x),
            DeleteTopicState::default().with_name(Some(topic_name("z"))),
            DeleteTopicState::default().with_topic_id(Uuid::new_v4()),
            DeleteTopicState::default(),
            DeleteTopicState::default()
                .with_name(Some(topic_name("y")))
                .with_topic_id(y),
        ];
        let resp = handle(&ctx, 6, by_state(states)).await;
        assert_encodes(&resp, 6);
        assert_eq!(
            codes(&resp),
            vec![
                0,
                0,
                ResponseError::UnknownTopicId.code(),
                ResponseError::InvalidRequest.code(),
                ResponseError::InvalidRequest.code()
            ]
        );
        assert_eq!(
            resp.responses[0].name.as_ref().map(|n| n.0.as_str()),
            Some("x")
        );
        assert_eq!(resp.responses[0].topic_id, x);
        let image = ctx.broker.image();
        assert!(image.topic("x").is_none() && image.topic("z").is_none());
        assert!(image.topic("y").is_some());
    }

    #[tokio::test]
    async fn v6_a_name_and_its_id_together_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(&ctx, vec![creatable("both", 1, &[])]).await;
        let id = ctx
            .broker
            .image()
            .topic("both")
            .map(|t| t.topic_id)
            .expect("topic");
        let states = vec![
            DeleteTopicState::default().with_topic_id(id),
            DeleteTopicState::default().with_name(Some(topic_name("both"))),
        ];
        let resp = handle(&ctx, 6, by_state(states)).await;
        assert_eq!(codes(&resp), vec![ResponseError::InvalidRequest.code(); 2]);
        assert!(ctx.broker.image().topic("both").is_some());
    }
}
