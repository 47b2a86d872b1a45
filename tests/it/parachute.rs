//! Contract tests of `vaultrunner::parachute`, the client of the Parachute
//! Vault API. Each scenario is one function of a [`Target`], run twice:
//! against the fake of `parachute_fake.rs` (always), and against the real
//! server when `VR_PARACHUTE_URL` (its `…/vault/default` base) and
//! `VR_PARACHUTE_TOKEN` are set; unset, the real half prints that it was
//! skipped. Start the real server with
//! `../shared/parachute-vault/run-vault.sh` (docs/remote-vault.md).
//!
//! Besides the client, each scenario checks the server's quirks with raw
//! requests, so a fake that drifts from the real server fails here too.
//! Scenarios that need the fake's knobs (down, injected failures, request
//! counts, the trigger) run against the fake only.

use std::time::Duration;

use serde_json::{Map, Value, json};
use vaultrunner::parachute::{
    BaseUrl, Client, Config, Conflict, Content, Error, ErrorKind, NewNote, NoteRef, Patch, Query,
    TOKEN_ENV, Token,
};

use crate::parachute_fake::FakeVault;

/// Where a scenario runs: the fake, or the real server; every path and tag
/// it uses is its own (the real server keeps notes between runs).
struct Target {
    kind: &'static str,
    base: String,
    token: String,
    read_only: Option<String>,
    fake: Option<FakeVault>,
    run: String,
}

impl Target {
    async fn fake() -> Target {
        let fake = FakeVault::start().await;
        Target {
            kind: "fake",
            base: fake.base(),
            token: fake.token().to_string(),
            read_only: Some(fake.read_only_token().to_string()),
            fake: Some(fake),
            run: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The real server named by the environment, or `None` (with a note).
    async fn real(test: &str) -> Option<Target> {
        let (Ok(base), Ok(token)) = (
            std::env::var("VR_PARACHUTE_URL"),
            std::env::var("VR_PARACHUTE_TOKEN"),
        ) else {
            eprintln!(
                "{test}: real-server half skipped (set VR_PARACHUTE_URL and VR_PARACHUTE_TOKEN; see docs/remote-vault.md)"
            );
            return None;
        };
        let mut t = Target {
            kind: "real",
            base: base.trim_end_matches('/').to_string(),
            token,
            read_only: None,
            fake: None,
            run: uuid::Uuid::new_v4().simple().to_string(),
        };
        t.read_only = crate::common::mint_read_only(
            &reqwest::Client::new(),
            &t.base,
            &t.token,
            "vr-test-read-only",
            test,
        )
        .await;
        Some(t)
    }

    fn client(&self) -> Client {
        self.client_with(Config::default())
    }

    fn client_with(&self, config: Config) -> Client {
        Client::new(
            BaseUrl::parse(&self.base).unwrap(),
            Token::new(&self.token).unwrap(),
            config,
        )
        .unwrap()
    }

    fn path(&self, leaf: &str) -> String {
        format!("vr-test/{}/{leaf}", self.run)
    }

    fn tag(&self, t: &str) -> String {
        format!("vrtest-{}-{t}", self.run)
    }

    fn api(&self, tail: &str) -> String {
        format!("{}/api/{tail}", self.base)
    }

    /// One request with the test token, outside the client: the status and
    /// the JSON answer (`null` when not JSON).
    async fn raw(&self, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
        crate::common::vault_api(&reqwest::Client::new(), &self.token, method, url, body).await
    }

    /// An error of the client, checked for what every error must hold:
    /// the token is never in it.
    fn checked(&self, e: Error) -> Error {
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains(&self.token),
            "{}: the token leaked: {text}",
            self.kind
        );
        e
    }
}

fn meta(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

/// Two tests per scenario: `<scenario>::fake` and `<scenario>::real`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fake() {
                super::$name(&super::Target::fake().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real() {
                if let Some(t) = super::Target::real(concat!("parachute::", stringify!($name))).await {
                    super::$name(&t).await
                }
            }
        }
    )*};
}

both!(
    health_answers,
    create_normalises_and_reads_back_by_id_and_path,
    create_never_upserts,
    an_empty_note_is_refused,
    update_is_compare_and_set,
    a_users_edit_makes_the_next_update_stale,
    an_update_without_a_version_is_refused_with_428,
    tags_change_only_by_add_and_remove,
    listing_pages_by_offset_until_a_short_page,
    tags_list_with_commas_any_or_all,
    path_prefix_is_exact_in_the_client,
    listing_without_content_gives_sizes,
    delete_then_not_found,
    a_wrong_token_names_the_variable,
    a_read_only_token_names_the_scope,
    a_wrong_vault_name_is_named,
    notes_without_a_path,
    a_large_note_is_reported_not_loaded,
);

async fn health_answers(t: &Target) {
    let h = t.client().health().await.unwrap();
    assert_eq!(h.vault, "default", "{}", t.kind);
    // The health check needs a token (it checks the token too).
    let r = reqwest::get(t.api("health")).await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "{}", t.kind);
}

async fn create_normalises_and_reads_back_by_id_and_path(t: &Target) {
    let c = t.client();
    let path = t.path("Inbox/hi");
    let odd = json!({"agent": "echo", "n": 3, "f": 1.5, "b": true, "z": null, "list": ["a", 1], "obj": {"k": "v"}});
    let created = c
        .create(&NewNote {
            // `\`, a `.md`, spaces and slashes around: stored normalised.
            path: Some(format!("  \\{}.md ", path.replace('/', "\\"))),
            content: "Hello!".into(),
            metadata: meta(odd.clone()),
            tags: vec![t.tag("b"), t.tag("a")],
        })
        .await
        .unwrap();
    assert_eq!(created.path.as_deref(), Some(path.as_str()), "{}", t.kind);
    assert_eq!(created.text(), Some("Hello!"));
    assert_eq!(
        Value::Object(created.metadata.clone()),
        odd,
        "{}: metadata kept as sent",
        t.kind
    );
    assert_eq!(
        created.tags,
        vec![t.tag("a"), t.tag("b")],
        "{}: tags sorted",
        t.kind
    );
    assert!(created.created_at.is_some());
    assert_eq!(created.updated_at, created.created_at.clone().unwrap());

    let by_id = c.get(NoteRef::Id(&created.id)).await.unwrap();
    assert_eq!(by_id, created, "{}", t.kind);
    let by_path = c.get(NoteRef::Path(&path)).await.unwrap();
    assert_eq!(by_path, created, "{}", t.kind);
    // The client normalises what it looks up as the server stored it.
    let by_raw = c.get(NoteRef::Path(&format!("/{path}.md"))).await.unwrap();
    assert_eq!(by_raw.id, created.id, "{}", t.kind);

    // The server: the path is ONE segment (`%2F`); as two it is not found,
    // and its lookup is exact (no normalisation on read).
    let enc = path.replace('/', "%2F");
    assert_eq!(
        t.raw("GET", &t.api(&format!("notes/{enc}")), None).await.0,
        200,
        "{}",
        t.kind
    );
    let (s, v) = t.raw("GET", &t.api(&format!("notes/{path}")), None).await;
    assert_eq!((s, v), (404, json!({"error": "Not found"})), "{}", t.kind);
    assert_eq!(
        t.raw("GET", &t.api(&format!("notes/{enc}.md")), None)
            .await
            .0,
        404,
        "{}",
        t.kind
    );
    // Answers are camelCase.
    let (_, v) = t
        .raw("GET", &t.api(&format!("notes/{}", created.id)), None)
        .await;
    assert!(
        v.get("updatedAt").is_some() && v.get("updated_at").is_none(),
        "{}: {v}",
        t.kind
    );

    let e = t.checked(c.get(NoteRef::Path(&t.path("absent"))).await.unwrap_err());
    assert!(e.is_not_found(), "{}: {e}", t.kind);
    assert!(e.to_string().contains("read note"), "{e}");
}

async fn create_never_upserts(t: &Target) {
    let c = t.client();
    let path = t.path("once");
    let first = c
        .create(&NewNote {
            path: Some(path.clone()),
            content: "first".into(),
            ..NewNote::default()
        })
        .await
        .unwrap();
    let e = c
        .create(&NewNote {
            path: Some(format!("{path}.md")),
            content: "second".into(),
            ..NewNote::default()
        })
        .await
        .unwrap_err();
    let e = t.checked(e);
    assert_eq!(
        e.conflict(),
        Some(&Conflict::Path { path: path.clone() }),
        "{}: {e}",
        t.kind
    );
    assert!(!e.is_transient());
    assert!(e.to_string().contains("path_conflict"), "{e}");
    let now = c.get(NoteRef::Path(&path)).await.unwrap();
    assert_eq!(
        (now.text(), now.version()),
        (Some("first"), first.version()),
        "{}",
        t.kind
    );

    // A batch is created in order up to its first conflict (not atomic).
    let (s, v) = t
        .raw(
            "POST",
            &t.api("notes"),
            Some(json!({"notes": [
                {"content": "b1", "path": t.path("batch/1")},
                {"content": "b2", "path": path},
                {"content": "b3", "path": t.path("batch/3")},
            ]})),
        )
        .await;
    assert_eq!(
        (s, v.get("error_type")),
        (409, Some(&json!("path_conflict"))),
        "{}: {v}",
        t.kind
    );
    assert!(
        c.get(NoteRef::Path(&t.path("batch/1"))).await.is_ok(),
        "{}",
        t.kind
    );
    assert!(
        c.get(NoteRef::Path(&t.path("batch/3")))
            .await
            .unwrap_err()
            .is_not_found(),
        "{}",
        t.kind
    );
    // A batch answers a list.
    let (s, v) = t
        .raw(
            "POST",
            &t.api("notes"),
            Some(json!({"notes": [{"content": "b4", "path": t.path("batch/4")}]})),
        )
        .await;
    assert_eq!(
        (s, v.as_array().map(Vec::len)),
        (201, Some(1)),
        "{}: {v}",
        t.kind
    );
}

async fn an_empty_note_is_refused(t: &Target) {
    let c = t.client();
    let e = t.checked(
        c.create(&NewNote {
            content: "  \n".into(),
            ..NewNote::default()
        })
        .await
        .unwrap_err(),
    );
    assert!(matches!(e.kind(), ErrorKind::Invalid(_)), "{}: {e}", t.kind);
    // The server's own refusal (the client does not send it).
    let (s, v) = t
        .raw("POST", &t.api("notes"), Some(json!({"content": " "})))
        .await;
    assert_eq!(
        (s, v.get("error_type")),
        (400, Some(&json!("empty_note"))),
        "{}: {v}",
        t.kind
    );
    // A path with no content is a note.
    let n = c
        .create(&NewNote {
            path: Some(t.path("empty")),
            ..NewNote::default()
        })
        .await
        .unwrap();
    assert_eq!(n.text(), Some(""), "{}", t.kind);
}

async fn update_is_compare_and_set(t: &Target) {
    let c = t.client();
    let n = c
        .create(&NewNote {
            path: Some(t.path("cas")),
            content: "v1".into(),
            metadata: meta(json!({"keep": "1", "status": "pending"})),
            tags: vec![t.tag("x")],
        })
        .await
        .unwrap();
    let patch = Patch {
        content: Some("v2".into()),
        metadata: meta(json!({"status": "done", "gone": null})),
        add_tags: vec![t.tag("y")],
        remove_tags: vec![t.tag("x")],
    };
    let u = c.update(&n.id, &n.version(), &patch).await.unwrap();
    assert_eq!(u.text(), Some("v2"), "{}", t.kind);
    assert_eq!(
        Value::Object(u.metadata.clone()),
        json!({"keep": "1", "status": "done", "gone": null}),
        "{}: merged shallowly, null stored as null",
        t.kind
    );
    assert_eq!(u.tags, vec![t.tag("y")], "{}", t.kind);
    assert!(
        u.updated_at > n.updated_at,
        "{}: {} then {}",
        t.kind,
        n.updated_at,
        u.updated_at
    );

    // Updates at once, each with the version the last answered: every one
    // moves the version strictly forward.
    let mut last = u.clone();
    for i in 0..5 {
        let next = c
            .update(
                &last.id,
                &last.version(),
                &Patch {
                    metadata: meta(json!({"i": i.to_string()})),
                    ..Patch::default()
                },
            )
            .await
            .unwrap();
        assert!(
            next.updated_at > last.updated_at,
            "{}: {} then {}",
            t.kind,
            last.updated_at,
            next.updated_at
        );
        last = next;
    }

    // The version read before is stale now: refused, nothing written.
    let e = t.checked(
        c.update(
            &n.id,
            &n.version(),
            &Patch {
                content: Some("lost".into()),
                ..Patch::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        e.conflict(),
        Some(&Conflict::Stale {
            current_updated_at: Some(last.updated_at.clone()),
            your_updated_at: n.updated_at.clone(),
        }),
        "{}: {e}",
        t.kind
    );
    assert!(!e.is_transient());
    assert_eq!(
        c.get(NoteRef::Id(&n.id)).await.unwrap().text(),
        Some("v2"),
        "{}",
        t.kind
    );
    // An update of a note that is gone.
    let e = c
        .update("no-such-id", &n.version(), &Patch::default())
        .await
        .unwrap_err();
    assert!(t.checked(e).is_not_found(), "{}", t.kind);
}

async fn a_users_edit_makes_the_next_update_stale(t: &Target) {
    let c = t.client();
    let n = c
        .create(&NewNote {
            path: Some(t.path("edited")),
            content: "mine".into(),
            ..NewNote::default()
        })
        .await
        .unwrap();
    // The user edits meanwhile (through the API, as an editor does).
    let (s, v) = t
        .raw(
            "PATCH",
            &t.api(&format!("notes/{}", n.id)),
            Some(json!({"content": "the user's", "force": true})),
        )
        .await;
    assert_eq!(s, 200, "{}: {v}", t.kind);
    let users = v["updatedAt"].as_str().unwrap().to_string();
    assert!(users > n.updated_at, "{}", t.kind);
    let e = t.checked(
        c.update(
            &n.id,
            &n.version(),
            &Patch {
                content: Some("overwrite".into()),
                ..Patch::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert!(
        matches!(e.conflict(), Some(Conflict::Stale { current_updated_at: Some(cur), .. }) if *cur == users),
        "{}: {e}",
        t.kind
    );
    assert_eq!(
        c.get(NoteRef::Id(&n.id)).await.unwrap().text(),
        Some("the user's"),
        "{}",
        t.kind
    );
}

async fn an_update_without_a_version_is_refused_with_428(t: &Target) {
    let n = t
        .client()
        .create(&NewNote {
            path: Some(t.path("needs-version")),
            content: "x".into(),
            ..NewNote::default()
        })
        .await
        .unwrap();
    let (s, v) = t
        .raw(
            "PATCH",
            &t.api(&format!("notes/{}", n.id)),
            Some(json!({"metadata": {"a": "1"}})),
        )
        .await;
    assert_eq!(
        (s, v.get("error_type")),
        (428, Some(&json!("precondition_required"))),
        "{}: {v}",
        t.kind
    );
    let (s, v) = t
        .raw(
            "PATCH",
            &t.api(&format!("notes/{}", n.id)),
            Some(json!({"metadata": {"a": "1"}, "if_updated_at": "2000-01-01T00:00:00.000Z"})),
        )
        .await;
    assert_eq!(
        (s, v.get("error_type"), v.get("your_updated_at")),
        (
            409,
            Some(&json!("conflict")),
            Some(&json!("2000-01-01T00:00:00.000Z"))
        ),
        "{}: {v}",
        t.kind
    );
    assert_eq!(
        v.get("current_updated_at"),
        Some(&json!(n.updated_at)),
        "{}: {v}",
        t.kind
    );
}

async fn tags_change_only_by_add_and_remove(t: &Target) {
    let c = t.client();
    let n = c
        .create(&NewNote {
            path: Some(t.path("tags")),
            content: "x".into(),
            tags: vec![t.tag("keep")],
            ..NewNote::default()
        })
        .await
        .unwrap();
    // A plain list is ignored (the version still moves: it was a CAS update).
    let (s, v) = t
        .raw(
            "PATCH",
            &t.api(&format!("notes/{}", n.id)),
            Some(json!({"tags": [t.tag("plain")], "if_updated_at": n.updated_at})),
        )
        .await;
    assert_eq!(
        (s, &v["tags"]),
        (200, &json!([t.tag("keep")])),
        "{}: {v}",
        t.kind
    );
    assert!(
        v["updatedAt"].as_str().unwrap() > n.updated_at.as_str(),
        "{}: {v}",
        t.kind
    );
    // A forced tag-only change does not move it.
    let before = v["updatedAt"].clone();
    let (s, v) = t
        .raw(
            "PATCH",
            &t.api(&format!("notes/{}", n.id)),
            Some(json!({"tags": {"add": [t.tag("added")]}, "force": true})),
        )
        .await;
    assert_eq!((s, &v["updatedAt"]), (200, &before), "{}: {v}", t.kind);
    assert_eq!(
        v["tags"],
        json!([t.tag("added"), t.tag("keep")]),
        "{}: {v}",
        t.kind
    );
}

async fn listing_pages_by_offset_until_a_short_page(t: &Target) {
    let tag = t.tag("page");
    let mut ids = Vec::new();
    for i in 0..7 {
        let n = t
            .client()
            .create(&NewNote {
                path: Some(t.path(&format!("page/{i}"))),
                content: format!("n{i}"),
                tags: vec![tag.clone()],
                ..NewNote::default()
            })
            .await
            .unwrap();
        ids.push(n.id);
    }
    for page_size in [3, 7, 50] {
        let c = t.client_with(Config {
            page_size,
            ..Config::default()
        });
        if let Some(f) = &t.fake {
            f.reset_requests();
        }
        let got = c
            .list(&Query::tagged(&[&tag]).with_content())
            .await
            .unwrap();
        let got_ids: Vec<_> = got.iter().map(|n| n.id.clone()).collect();
        assert_eq!(
            got_ids, ids,
            "{}: page size {page_size}, in createdAt order",
            t.kind
        );
        assert_eq!(got.last().unwrap().text(), Some("n6"));
        if let Some(f) = &t.fake {
            // 7 notes: pages of 3+3+1; 7+0; 7.
            let want = 7 / page_size as u64 + 1;
            assert_eq!(
                f.requests("GET /notes"),
                want,
                "page size {page_size}: {:?}",
                f.request_counts()
            );
            assert_eq!(f.total_requests(), want);
        }
    }
    // The server's default page is 50, and paging is by offset.
    let (s, v) = t
        .raw(
            "GET",
            &t.api(&format!("notes?tag={tag}&limit=2&offset=5")),
            None,
        )
        .await;
    let paths: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["path"].clone())
        .collect();
    assert_eq!(
        (s, paths),
        (200, vec![json!(t.path("page/5")), json!(t.path("page/6"))]),
        "{}",
        t.kind
    );
    let (_, v) = t
        .raw(
            "GET",
            &t.api(&format!("notes?tag={tag}&sort=desc&limit=1")),
            None,
        )
        .await;
    assert_eq!(v[0]["path"], json!(t.path("page/6")), "{}", t.kind);
}

async fn tags_list_with_commas_any_or_all(t: &Target) {
    let c = t.client();
    let (a, b) = (t.tag("a"), t.tag("b"));
    for (leaf, tags) in [
        ("only-a", vec![a.clone()]),
        ("only-b", vec![b.clone()]),
        ("both", vec![a.clone(), b.clone()]),
    ] {
        c.create(&NewNote {
            path: Some(t.path(leaf)),
            content: leaf.into(),
            tags,
            ..NewNote::default()
        })
        .await
        .unwrap();
    }
    let paths = |notes: Vec<vaultrunner::parachute::Note>| -> Vec<String> {
        notes.into_iter().map(|n| n.path.unwrap()).collect()
    };
    let any = c.list(&Query::tagged(&[&a, &b])).await.unwrap();
    assert_eq!(
        paths(any),
        [t.path("only-a"), t.path("only-b"), t.path("both")],
        "{}",
        t.kind
    );
    let all = c.list(&Query::tagged(&[&a, &b]).all()).await.unwrap();
    assert_eq!(paths(all), [t.path("both")], "{}", t.kind);
    // The server: a repeated `tag=` is ignored (the first counts).
    let (_, v) = t
        .raw("GET", &t.api(&format!("notes?tag={b}&tag={a}")), None)
        .await;
    let got: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["path"].clone())
        .collect();
    assert_eq!(
        got,
        [json!(t.path("only-b")), json!(t.path("both"))],
        "{}",
        t.kind
    );
    // A tag with a comma cannot be asked for: refused before sending.
    let e = t.checked(c.list(&Query::tagged(&["a,b"])).await.unwrap_err());
    assert!(matches!(e.kind(), ErrorKind::Invalid(_)), "{e}");
}

async fn path_prefix_is_exact_in_the_client(t: &Target) {
    let c = t.client();
    for leaf in ["Sub_x/1", "SubAx/2", "sub_x/3", "Sub_x/4"] {
        c.create(&NewNote {
            path: Some(t.path(leaf)),
            content: leaf.into(),
            ..NewNote::default()
        })
        .await
        .unwrap();
    }
    let got = c
        .list(&Query::default().under(&t.path("Sub_x/")))
        .await
        .unwrap();
    let got: Vec<_> = got.into_iter().map(|n| n.path.unwrap()).collect();
    assert_eq!(got, [t.path("Sub_x/1"), t.path("Sub_x/4")], "{}", t.kind);
    // The server's own filter is a case-insensitive LIKE (`_` a wildcard).
    let (_, v) = t
        .raw(
            "GET",
            &t.api(&format!("notes?path_prefix={}", t.path("Sub_x/"))),
            None,
        )
        .await;
    assert_eq!(v.as_array().unwrap().len(), 4, "{}: {v}", t.kind);
}

async fn listing_without_content_gives_sizes(t: &Target) {
    let c = t.client();
    let tag = t.tag("sizes");
    c.create(&NewNote {
        path: Some(t.path("sized")),
        content: "héllo".into(),
        tags: vec![tag.clone()],
        ..NewNote::default()
    })
    .await
    .unwrap();
    let lean = c.list(&Query::tagged(&[&tag])).await.unwrap();
    assert_eq!(
        lean[0].content,
        Content::Omitted { byte_size: Some(6) },
        "{}",
        t.kind
    );
    let full = c
        .list(&Query::tagged(&[&tag]).with_content())
        .await
        .unwrap();
    assert_eq!(full[0].text(), Some("héllo"), "{}", t.kind);
}

async fn delete_then_not_found(t: &Target) {
    let c = t.client();
    let n = c
        .create(&NewNote {
            path: Some(t.path("doomed")),
            content: "x".into(),
            ..NewNote::default()
        })
        .await
        .unwrap();
    c.delete(&n.id).await.unwrap();
    assert!(
        c.get(NoteRef::Id(&n.id)).await.unwrap_err().is_not_found(),
        "{}",
        t.kind
    );
    let e = t.checked(c.delete(&n.id).await.unwrap_err());
    assert!(e.is_not_found(), "{}: {e}", t.kind);
}

async fn a_wrong_token_names_the_variable(t: &Target) {
    let wrong = "pvt_wrong_token_for_the_test";
    let c = Client::new(
        BaseUrl::parse(&t.base).unwrap(),
        Token::new(wrong).unwrap(),
        Config::default(),
    )
    .unwrap();
    for e in [
        c.health().await.unwrap_err(),
        c.list(&Query::default()).await.unwrap_err(),
        c.get(NoteRef::Path("x")).await.unwrap_err(),
    ] {
        let s = e.to_string();
        assert!(
            matches!(e.kind(), ErrorKind::Unauthorized { status: 401, .. }),
            "{}: {e:?}",
            t.kind
        );
        assert!(
            s.contains(TOKEN_ENV) && s.contains("Invalid API key"),
            "{}: {s}",
            t.kind
        );
        assert!(
            !s.contains(wrong) && !format!("{e:?}").contains(wrong),
            "{s}"
        );
        assert!(!e.is_transient());
    }
}

async fn a_read_only_token_names_the_scope(t: &Target) {
    let Some(ro) = &t.read_only else { return };
    let c = Client::new(
        BaseUrl::parse(&t.base).unwrap(),
        Token::new(ro).unwrap(),
        Config::default(),
    )
    .unwrap();
    c.list(&Query::tagged(&[&t.tag("none")])).await.unwrap();
    let e = c
        .create(&NewNote {
            path: Some(t.path("ro")),
            content: "x".into(),
            ..NewNote::default()
        })
        .await
        .unwrap_err();
    let s = e.to_string();
    assert!(
        matches!(e.kind(), ErrorKind::Unauthorized { status: 403, .. }),
        "{}: {e:?}",
        t.kind
    );
    assert!(
        s.contains(TOKEN_ENV) && s.contains("vault:write") && s.contains("it has vault:read"),
        "{}: {s}",
        t.kind
    );
    assert!(!s.contains(ro.as_str()), "{s}");
}

async fn a_wrong_vault_name_is_named(t: &Target) {
    let base = t.base.rsplit_once('/').unwrap().0.to_string() + "/nosuchvault";
    let c = Client::new(
        BaseUrl::parse(&base).unwrap(),
        Token::new(&t.token).unwrap(),
        Config::default(),
    )
    .unwrap();
    let e = t.checked(c.health().await.unwrap_err());
    assert_eq!(e.kind(), &ErrorKind::NoSuchVault, "{}: {e}", t.kind);
    assert!(e.to_string().contains("/vault/"), "{e}");
}

async fn notes_without_a_path(t: &Target) {
    let c = t.client();
    let tag = t.tag("pathless");
    let n = c
        .create(&NewNote {
            content: "no path".into(),
            tags: vec![tag.clone()],
            ..NewNote::default()
        })
        .await
        .unwrap();
    assert_eq!(n.path, None);
    assert_eq!(n.name(), format!("id {}", n.id));
    // A path that normalises to nothing is no path, as on the server.
    let (s, v) = t
        .raw(
            "POST",
            &t.api("notes"),
            Some(json!({"content": "y", "path": "///", "tags": [tag]})),
        )
        .await;
    assert_eq!((s, v.get("path")), (201, None), "{}: {v}", t.kind);
    let listed = c
        .list(&Query::tagged(&[&tag]).with_content())
        .await
        .unwrap();
    assert_eq!(listed.len(), 2, "{}", t.kind);
    assert!(listed.iter().all(|n| n.path.is_none()));
    let e = t.checked(
        c.create(&NewNote {
            path: Some(" / ".into()),
            content: "z".into(),
            ..NewNote::default()
        })
        .await
        .unwrap_err(),
    );
    assert!(matches!(e.kind(), ErrorKind::Invalid(_)), "{e}");
}

async fn a_large_note_is_reported_not_loaded(t: &Target) {
    let small = t.client_with(Config {
        max_note_bytes: 1000,
        ..Config::default()
    });
    let tag = t.tag("large");
    let big = "x".repeat(5000);
    let (s, v) = t
        .raw(
            "POST",
            &t.api("notes"),
            Some(json!({"content": big, "path": t.path("big"), "tags": [tag]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let e = t.checked(small.get(NoteRef::Path(&t.path("big"))).await.unwrap_err());
    assert!(
        matches!(
            e.kind(),
            ErrorKind::TooLarge {
                byte_size: Some(5000),
                limit: 1000
            }
        ),
        "{}: {e:?}",
        t.kind
    );
    let listed = small
        .list(&Query::tagged(&[&tag]).with_content())
        .await
        .unwrap();
    assert_eq!(
        listed[0].content,
        Content::TooLarge { byte_size: 5000 },
        "{}",
        t.kind
    );
    let lean = small.list(&Query::tagged(&[&tag])).await.unwrap();
    assert_eq!(
        lean[0].content,
        Content::TooLarge { byte_size: 5000 },
        "{}",
        t.kind
    );
    // Writing one is refused before it is sent.
    let e = t.checked(
        small
            .create(&NewNote {
                path: Some(t.path("big2")),
                content: big,
                ..NewNote::default()
            })
            .await
            .unwrap_err(),
    );
    assert!(matches!(e.kind(), ErrorKind::TooLarge { .. }), "{e}");
    assert!(
        small
            .get(NoteRef::Path(&t.path("big2")))
            .await
            .unwrap_err()
            .is_not_found()
    );
}

// ------------------------------------------------ the fake's knobs only

async fn fake() -> (Target, Client) {
    let t = Target::fake().await;
    let c = t.client_with(Config {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ..Config::default()
    });
    (t, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_going_away_and_coming_back_is_transient() {
    let (t, c) = fake().await;
    let f = t.fake.as_ref().unwrap();
    let n = c
        .create(&NewNote {
            path: Some("kept".into()),
            content: "x".into(),
            ..NewNote::default()
        })
        .await
        .unwrap();
    // Really gone: connections refused (the pooled one dropped too).
    f.stop().await;
    let e = t.checked(c.health().await.unwrap_err());
    assert!(e.is_transient(), "{e:?}");
    assert!(
        e.to_string().contains("unreachable") && e.to_string().contains("health check"),
        "{e}"
    );
    assert_eq!(e.retry_after(), None);
    f.restart().await;
    assert_eq!(c.get(NoteRef::Path("kept")).await.unwrap().id, n.id);
    // Down behind a proxy: 503 with Retry-After.
    f.set_down(true);
    let e = t.checked(c.list(&Query::default()).await.unwrap_err());
    assert!(e.is_transient(), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert!(e.to_string().contains("503"), "{e}");
    f.set_down(false);
    c.health().await.unwrap();
    // Injected failures, one request each.
    for (status, transient) in [
        (500, true),
        (502, true),
        (429, true),
        (408, true),
        (400, false),
        (422, false),
    ] {
        f.fail_next(1, status);
        let e = t.checked(c.get(NoteRef::Id(&n.id)).await.unwrap_err());
        assert_eq!(e.is_transient(), transient, "{status}: {e:?}");
        assert!(e.to_string().contains(&status.to_string()), "{e}");
        c.get(NoteRef::Id(&n.id)).await.unwrap();
    }
    f.fail_next(1, 428);
    let e = c
        .update(&n.id, &n.version(), &Patch::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::VersionNotSent);
    assert!(
        e.to_string().contains("if_updated_at") && e.to_string().contains("428"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_that_is_not_the_apis_json_is_a_clear_error() {
    let (t, c) = fake().await;
    let f = t.fake.as_ref().unwrap();
    for what in ["health check", "list notes", "read note id"] {
        f.fail_next(1, 200);
        let e = match what {
            "health check" => c.health().await.unwrap_err(),
            "list notes" => c.list(&Query::default()).await.unwrap_err(),
            _ => c.get(NoteRef::Id("x")).await.unwrap_err(),
        };
        let e = t.checked(e);
        assert!(!e.is_transient(), "{e:?}");
        assert!(matches!(e.kind(), ErrorKind::Protocol(_)), "{e:?}");
        let s = e.to_string();
        assert!(
            s.contains(what) && s.contains("not JSON") && s.contains("captive portal"),
            "{s}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out_as_transient() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // accepted, never answered
        }
    });
    let c = Client::new(
        BaseUrl::parse(&format!("http://{addr}/vault/default")).unwrap(),
        Token::new("pvt_x").unwrap(),
        Config {
            request_timeout: Duration::from_millis(300),
            ..Config::default()
        },
    )
    .unwrap();
    let e = c.health().await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("no answer within"), "{e}");
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fakes_edit_moves_the_version_and_snapshots_show_it() {
    let (t, c) = fake().await;
    let f = t.fake.as_ref().unwrap();
    let n = c
        .create(&NewNote {
            path: Some("Inbox/e".into()),
            content: "a".into(),
            metadata: meta(json!({"k": "1"})),
            ..NewNote::default()
        })
        .await
        .unwrap();
    let v = f
        .edit(
            "Inbox/e",
            json!({"content": "b", "metadata": {"u": "2"}, "tags": {"add": ["t"]}}),
        )
        .unwrap();
    assert!(v > n.updated_at);
    let snap = f.note("Inbox/e").unwrap();
    assert_eq!(snap["updatedAt"], json!(v));
    assert_eq!(snap["metadata"], json!({"k": "1", "u": "2"}));
    assert_eq!(f.notes().len(), 1);
    let e = c
        .update(&n.id, &n.version(), &Patch::default())
        .await
        .unwrap_err();
    assert!(matches!(e.conflict(), Some(Conflict::Stale { .. })), "{e}");
    assert_eq!(f.edit("nope", json!({})), None);
}

/// A webhook receiver: every body it gets, answering `status`.
async fn receiver(status: u16) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(v): axum::Json<Value>| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(v);
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    axum::Json(json!({"ok": true})),
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook?secret=s", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fakes_trigger_fires_once_and_never_retries() {
    let (t, c) = fake().await;
    let f = t.fake.as_ref().unwrap();
    let (url, got) = receiver(200).await;
    f.with_trigger(&url, &["agent/message", "agent/message/inbound"]);
    let tags = vec![
        "agent/message".to_string(),
        "agent/message/inbound".to_string(),
    ];
    let n = c
        .create(&NewNote {
            path: Some("Inbox/m".into()),
            content: "hi".into(),
            metadata: meta(json!({"agent": "echo"})),
            tags: tags.clone(),
        })
        .await
        .unwrap();
    // Only one of the tags: no delivery.
    c.create(&NewNote {
        path: Some("Inbox/other".into()),
        content: "x".into(),
        tags: vec!["agent/message".into()],
        ..NewNote::default()
    })
    .await
    .unwrap();
    crate::common::wait_until_async(Duration::from_secs(10), "the delivery", || {
        f.note("Inbox/m").unwrap()["metadata"]
            .get("channel_inbound_rendered_at")
            .is_some()
    })
    .await;
    let bodies = got.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(
        (&bodies[0]["trigger"], &bodies[0]["event"]),
        (&json!("channel_inbound"), &json!("created"))
    );
    assert_eq!(bodies[0]["note"]["id"], json!(n.id));
    assert_eq!(bodies[0]["note"]["metadata"], json!({"agent": "echo"}));
    let now = c.get(NoteRef::Id(&n.id)).await.unwrap();
    assert_eq!(
        now.updated_at, n.updated_at,
        "the markers do not move updatedAt"
    );
    assert!(!now.metadata.contains_key("channel_inbound_pending_at"));
    // Later PATCHes (even adding the tags) never fire it again.
    c.update(
        &n.id,
        &now.version(),
        &Patch {
            metadata: meta(json!({"status": "done"})),
            ..Patch::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(f.trigger_deliveries(), 1);

    // A receiver that fails: delivered once, marked pending, never retried.
    let (bad, got_bad) = receiver(500).await;
    f.with_trigger(&bad, &["agent/message/inbound"]);
    let m = c
        .create(&NewNote {
            path: Some("Inbox/m2".into()),
            content: "hi".into(),
            tags,
            ..NewNote::default()
        })
        .await
        .unwrap();
    crate::common::wait_until_async(Duration::from_secs(10), "the failed delivery", || {
        got_bad.lock().unwrap().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got_bad.lock().unwrap().len(), 1);
    let snap = f.note(&m.id).unwrap();
    assert!(
        snap["metadata"].get("channel_inbound_pending_at").is_some(),
        "{snap}"
    );
    assert!(
        snap["metadata"]
            .get("channel_inbound_rendered_at")
            .is_none(),
        "{snap}"
    );
    assert_eq!(snap["updatedAt"], json!(m.updated_at));
    assert_eq!(f.trigger_deliveries(), 2);
}
