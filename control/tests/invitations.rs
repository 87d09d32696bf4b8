//! Invitation links through the service on both stores: roles, single- and multi-use links,
//! expiry (at a simulated `now`), revocation, and a speaker link that puts its holder on stage
//! when they join.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::redis_server::RedisServer;
use common::service::{host, new_room, now, start, uid};
use stoa_control::Control;
use stoa_control::model::{Role, RoomState};
use stoa_control::permission::Action;
use stoa_control::room::{Actor, Command};
use stoa_control::schedule::Schedule;
use stoa_control::service::NewInvite;
use stoa_control::store::embedded::EmbeddedStore;
use stoa_control::store::redis::RedisStore;

async fn invitations(control: Control) {
    let id = control
        .create_room(&host(), new_room("Panel", None, Schedule::default()))
        .await
        .unwrap()
        .room
        .id;
    let hana = uid("hana");
    let speaker_once = NewInvite {
        role: Role::Speaker,
        max_uses: Some(1),
        expires_in: Some(3600),
    };
    // Only the host and co-hosts make, list and revoke links; a link gives no host role.
    let err = control
        .invite(&uid("zed"), &id, speaker_once.clone())
        .await
        .unwrap_err();
    assert_eq!((err.status, err.code), (403, "not_allowed"));
    let bad = NewInvite {
        role: Role::Host,
        ..NewInvite::default()
    };
    let err = control.invite(&hana, &id, bad).await.unwrap_err();
    assert_eq!(err.code, "invalid_role");
    for bad in [
        NewInvite {
            max_uses: Some(0),
            ..NewInvite::default()
        },
        NewInvite {
            expires_in: Some(10),
            ..NewInvite::default()
        },
    ] {
        let err = control.invite(&hana, &id, bad).await.unwrap_err();
        assert_eq!(err.code, "invalid_field");
    }
    let (once, made) = control.invite(&hana, &id, speaker_once).await.unwrap();
    assert_eq!(
        (made.role, made.max_uses, made.uses),
        (Role::Speaker, Some(1), 0)
    );
    let err = control.invitations(&uid("zed"), &id).await.unwrap_err();
    assert_eq!(err.status, 403);

    // Lee accepts before joining: lined up as a speaker, on stage on arrival.
    let t = now();
    let doc = control.accept(&uid("lee"), &once, t).await.unwrap();
    assert_eq!(doc.lineup.get(&uid("lee")), Some(&Role::Speaker));
    // Accepting again what one has uses nothing up; anyone else finds the link used up.
    control.accept(&uid("lee"), &once, t).await.unwrap();
    let err = control.accept(&uid("kim"), &once, t).await.unwrap_err();
    assert_eq!((err.status, err.code), (410, "invitation_used_up"));
    let grant = control.join(&uid("lee"), "Lee", &id).await.unwrap();
    assert_eq!(grant.role, Role::Speaker);

    // A multi-use co-host link, accepted by someone in the room: co-host at once.
    control.join(&uid("kim"), "Kim", &id).await.unwrap();
    let co_hosts = NewInvite {
        role: Role::CoHost,
        ..NewInvite::default()
    };
    let (many, _) = control.invite(&hana, &id, co_hosts).await.unwrap();
    let doc = control.accept(&uid("kim"), &many, t).await.unwrap();
    assert_eq!(doc.members[&uid("kim")].role, Role::CoHost);
    control.accept(&uid("max"), &many, t).await.unwrap();
    // Kim, a co-host now, lists the links (newest first) and revokes one.
    let listed = control.invitations(&uid("kim"), &id).await.unwrap();
    let tokens: Vec<&str> = listed.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tokens, [many.as_str(), once.as_str()]);
    assert_eq!((listed[0].1.uses, listed[1].1.uses), (2, 1));
    control.revoke(&uid("kim"), &id, &many).await.unwrap();
    let err = control.accept(&uid("ora"), &many, t).await.unwrap_err();
    assert_eq!((err.status, err.code), (410, "invitation_revoked"));
    let err = control.invitation(&many, t).await.unwrap_err();
    assert_eq!(err.code, "invitation_revoked");
    // Whoever accepted before keeps their role.
    let doc = control
        .rooms(&[RoomState::Live])
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.room.id == id)
        .unwrap();
    assert_eq!(doc.members[&uid("kim")].role, Role::CoHost);
    let err = control.revoke(&hana, &id, "x").await.unwrap_err();
    assert_eq!(err.status, 404);

    // A listener link expires: refused as expired past its time (simulated), not before.
    let short = NewInvite {
        expires_in: Some(60),
        ..NewInvite::default()
    };
    let (soon, made) = control.invite(&hana, &id, short).await.unwrap();
    control
        .invitation(&soon, made.expires_at - 1)
        .await
        .unwrap();
    let err = control
        .accept(&uid("ora"), &soon, made.expires_at)
        .await
        .unwrap_err();
    assert_eq!((err.status, err.code), (410, "invitation_expired"));
    let err = control
        .invitation("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", t)
        .await
        .unwrap_err();
    assert_eq!(err.status, 404);
    // A listener link lets its holder raise a hand in an "invited" room.
    control.accept(&uid("ora"), &soon, t).await.unwrap();
    control.join(&uid("ora"), "Ora", &id).await.unwrap();
    control
        .act(
            &Actor::User(uid("ora")),
            &id,
            Command::Own(Action::RaiseHand),
        )
        .await
        .unwrap();
    // Nothing is accepted once the room has ended.
    let (late, _) = control
        .invite(&hana, &id, NewInvite::default())
        .await
        .unwrap();
    control
        .act(&Actor::User(hana.clone()), &id, Command::End)
        .await
        .unwrap();
    let err = control.accept(&uid("pia"), &late, now()).await.unwrap_err();
    assert_eq!(err.code, "room_ended");
    let err = control
        .invite(&hana, &id, NewInvite::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, "room_ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_invitations() {
    let dir = std::env::temp_dir().join(format!("stoa-invitations-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir.join("control.redb")).unwrap();
    invitations(start(Arc::new(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_invitations() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url, "v:").await.unwrap();
    invitations(start(Arc::new(store))).await;
}
