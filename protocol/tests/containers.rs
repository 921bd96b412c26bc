//! The container messages (version 5): their JSON on the wire, round trips, directions, and the
//! id rule.

use podvm_protocol::{
    check_container_id, AppLimits, AppSpec, BootSpec, ContainerErrorKind, ContainerOp,
    ContainerRootfs, ContainerSpec, Control, ExitStatus, IdError, Message, ProcessSpec, ShareSpec,
    MAX_CONTAINER_ID,
};

fn roundtrip(control: Control) -> Control {
    let frame = Message::Control(control.clone()).encode().expect("encode");
    let decoded = Message::read_from(&mut frame.as_slice())
        .expect("decode")
        .expect("a frame");
    assert_eq!(decoded, Message::Control(control.clone()));
    control
}

fn every_container_message() -> Vec<Control> {
    let spec = ContainerSpec {
        id: "db".into(),
        rootfs: ContainerRootfs {
            share: "sandbox".into(),
            path: "db/rootfs".into(),
            read_only: false,
        },
        process: ProcessSpec {
            command: vec!["postgres".into()],
            ..ProcessSpec::default()
        },
    };
    vec![
        Control::CreateContainer(Box::new(spec)),
        Control::StartContainer { id: "db".into() },
        Control::SignalContainer {
            id: "db".into(),
            signo: 9,
        },
        Control::RemoveContainer { id: "db".into() },
        Control::ContainerDone {
            id: "db".into(),
            op: ContainerOp::Remove,
        },
        Control::ContainerError {
            id: "db".into(),
            op: ContainerOp::Signal,
            kind: ContainerErrorKind::BadSignal,
            message: "container db: no such signal 99".into(),
        },
        Control::ContainerExited {
            id: "db".into(),
            status: ExitStatus::Signal(9),
        },
    ]
}

#[test]
fn every_container_message_roundtrips() {
    for control in every_container_message() {
        roundtrip(control);
    }
    for op in [
        ContainerOp::Create,
        ContainerOp::Start,
        ContainerOp::Signal,
        ContainerOp::Remove,
    ] {
        roundtrip(Control::ContainerDone { id: "x".into(), op });
    }
    for kind in [
        ContainerErrorKind::BadId,
        ContainerErrorKind::BadRootfs,
        ContainerErrorKind::BadProcess,
        ContainerErrorKind::BadSignal,
        ContainerErrorKind::Exists,
        ContainerErrorKind::NotFound,
        ContainerErrorKind::TooMany,
        ContainerErrorKind::WrongState,
        ContainerErrorKind::Failed,
    ] {
        roundtrip(Control::ContainerError {
            id: "x".into(),
            op: ContainerOp::Create,
            kind,
            message: "m".into(),
        });
    }
}

#[test]
fn requests_go_to_the_agent_and_answers_to_the_host() {
    let from_host: Vec<bool> = every_container_message()
        .iter()
        .map(Control::is_from_host)
        .collect();
    assert_eq!(from_host, [true, true, true, true, false, false, false]);
    for control in every_container_message() {
        let message = Message::Control(control.clone());
        if control.is_from_host() {
            assert!(message.check_from_agent().is_err(), "{}", control.name());
        } else {
            assert!(message.check_from_host().is_err(), "{}", control.name());
        }
    }
}

#[test]
fn the_wire_json_is_as_documented() {
    let json = r#"{"type":"create_container","id":"web","rootfs":{"share":"s","path":"web"},
        "process":{"command":["httpd"]}}"#;
    let control: Control = serde_json::from_str(json).expect("minimal create");
    let Control::CreateContainer(spec) = control else {
        panic!("not a create");
    };
    assert_eq!(spec.id, "web");
    assert!(!spec.rootfs.read_only);
    assert_eq!(spec.process.limits, AppLimits::default());
    assert!(!spec.process.stdin);
    let error = serde_json::to_string(&Control::ContainerError {
        id: "web".into(),
        op: ContainerOp::Start,
        kind: ContainerErrorKind::WrongState,
        message: "m".into(),
    })
    .expect("encode");
    assert_eq!(
        error,
        r#"{"type":"container_error","id":"web","op":"start","kind":"wrong_state","message":"m"}"#
    );
    // Names never carry a payload (a spec may hold secrets in its environment).
    assert_eq!(
        Control::CreateContainer(Box::default()).name(),
        "create_container"
    );
}

#[test]
fn boot_specs_without_the_new_fields_still_parse() {
    let spec: BootSpec =
        serde_json::from_str(r#"{"command":["sh"],"env":[],"workdir":null}"#).expect("parse");
    assert!(!spec.sandbox);
    assert!(spec.shares.is_empty());
    let sandbox: BootSpec = serde_json::from_str(
        r#"{"command":[],"env":[],"workdir":null,"sandbox":true,"shares":[{"tag":"s"}]}"#,
    )
    .expect("parse");
    assert!(sandbox.sandbox);
    assert_eq!(
        sandbox.shares,
        [ShareSpec {
            tag: "s".into(),
            read_only: false
        }]
    );
}

#[test]
fn an_apps_process_is_described_as_a_containers() {
    let app = AppSpec {
        name: "web".into(),
        command: vec!["httpd".into()],
        env: vec!["A=1".into()],
        workdir: Some("/srv".into()),
        user: Some("www".into()),
        group: Some("www".into()),
        limits: AppLimits {
            memory_bytes: Some(1),
            ..AppLimits::default()
        },
        ..AppSpec::default()
    };
    let process = app.process();
    assert_eq!(process.command, app.command);
    assert_eq!(process.env, app.env);
    assert_eq!(process.workdir, app.workdir);
    assert_eq!(process.user, app.user);
    assert_eq!(process.group, app.group);
    assert_eq!(process.limits, app.limits);
    assert!(!process.tty && !process.stdin, "apps read no stdin");
}

#[test]
fn container_ids_are_acnames_of_bounded_length() {
    for good in [
        "a",
        "web",
        "web-1",
        "0",
        "a-b-c",
        &"x".repeat(MAX_CONTAINER_ID),
    ] {
        assert_eq!(check_container_id(good), Ok(()), "{good}");
    }
    let bad = [
        ("", IdError::Empty),
        (&"x".repeat(MAX_CONTAINER_ID + 1), IdError::TooLong),
        ("Web", IdError::BadChar),
        ("a/b", IdError::BadChar),
        ("..", IdError::BadChar),
        ("a.b", IdError::BadChar),
        ("a_b", IdError::BadChar),
        ("a b", IdError::BadChar),
        ("é", IdError::BadChar),
        ("-a", IdError::BadDash),
        ("a-", IdError::BadDash),
        ("a--b", IdError::BadDash),
    ];
    for (id, expected) in bad {
        assert_eq!(check_container_id(id), Err(expected), "{id:?}");
    }
}
