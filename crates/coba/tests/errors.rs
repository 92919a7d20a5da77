//! Invalid settings and inputs are errors that name the field, task and step; never panics.

use coba::{MethodKind, WeightError, Weighter, WeighterConfig};

fn build(edit: impl FnOnce(&mut WeighterConfig), initial: &[f64]) -> Result<Weighter, WeightError> {
    let mut config = WeighterConfig::default();
    edit(&mut config);
    Weighter::new(&config, initial)
}

fn setting_name(r: Result<Weighter, WeightError>) -> &'static str {
    match r {
        Err(WeightError::InvalidSetting { name, .. }) => name,
        other => panic!("expected InvalidSetting, got {other:?}"),
    }
}

#[test]
fn invalid_settings_name_the_field() {
    let ok = [1.0, 2.0];
    assert_eq!(setting_name(build(|_| {}, &[])), "num_tasks");
    assert_eq!(
        setting_name(build(|c| c.update_interval = 0, &ok)),
        "update_interval"
    );
    for h in [0, 1] {
        assert_eq!(
            setting_name(build(|c| c.history_length = h, &ok)),
            "history_length"
        );
    }
    for tau in [0.0, -1.0, f64::NAN, f64::INFINITY, 1.0000001e6] {
        assert_eq!(setting_name(build(|c| c.tau = tau, &ok)), "tau");
    }
    // Baselines validate the shared settings too.
    for m in MethodKind::ALL {
        assert_eq!(
            setting_name(build(
                |c| {
                    c.method = m;
                    c.history_length = 1;
                },
                &ok
            )),
            "history_length"
        );
    }
}

#[test]
fn invalid_initial_losses_name_the_task() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        match build(|_| {}, &[1.0, bad]) {
            Err(WeightError::InvalidInitialLoss { task: 1, .. }) => {}
            other => panic!("{bad}: {other:?}"),
        }
    }
}

fn probe_error(losses: &[Option<f64>], method: MethodKind) -> WeightError {
    let config = WeighterConfig {
        method,
        warmup_steps: 0,
        ..Default::default()
    };
    let mut w = Weighter::new(&config, &[1e-10, 2.0]).unwrap();
    w.weights_for_step(0).unwrap();
    w.weights_for_step(1).unwrap();
    w.observe_probe(1, losses).unwrap_err()
}

#[test]
fn invalid_probe_values_name_step_and_task() {
    for bad in [-0.5, f64::NAN, f64::NEG_INFINITY, f64::INFINITY] {
        let e = probe_error(&[Some(1.0), Some(bad)], MethodKind::Coba);
        assert!(
            matches!(
                e,
                WeightError::InvalidProbeLoss {
                    step: 1,
                    task: 1,
                    ..
                }
            ),
            "{e:?}"
        );
    }
    let e = probe_error(&[Some(1e300), Some(1.0)], MethodKind::Coba);
    assert!(
        matches!(
            e,
            WeightError::RatioOutOfRange {
                step: 1,
                task: 0,
                ..
            }
        ),
        "{e:?}"
    );
    let e = probe_error(&[Some(1.0)], MethodKind::Coba);
    assert_eq!(
        e,
        WeightError::WrongTaskCount {
            expected: 2,
            got: 1
        }
    );
    for m in [
        MethodKind::Uniform,
        MethodKind::Lbtw,
        MethodKind::Dwa,
        MethodKind::Famo,
    ] {
        for absent in [None, Some(0.0)] {
            let e = probe_error(&[Some(1.0), absent], m);
            assert!(
                matches!(
                    e,
                    WeightError::MissingTask {
                        step: 1,
                        task: 1,
                        ..
                    }
                ),
                "{m}: {e:?}"
            );
        }
    }
}

#[test]
fn steps_out_of_order_are_errors() {
    let mut w = build(|c| c.warmup_steps = 0, &[1.0]).unwrap();
    assert!(matches!(
        w.weights_for_step(1),
        Err(WeightError::OutOfOrder { step: 1, .. })
    ));
    w.weights_for_step(0).unwrap();
    // Step 0 is never a probe step.
    assert!(matches!(
        w.observe_probe(0, &[Some(1.0)]),
        Err(WeightError::OutOfOrder { .. })
    ));
    w.weights_for_step(1).unwrap();
    // The probe after step 1 is due before the weights of step 2.
    assert!(matches!(
        w.weights_for_step(2),
        Err(WeightError::OutOfOrder { step: 2, .. })
    ));
    w.observe_probe(1, &[Some(0.9)]).unwrap();
    assert!(matches!(
        w.observe_probe(1, &[Some(0.9)]),
        Err(WeightError::OutOfOrder { .. })
    ));
    w.weights_for_step(2).unwrap();
}

#[test]
fn errors_read_well() {
    let e = build(|c| c.tau = -2.0, &[1.0]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid setting `tau` = -2: must be finite, > 0 and <= 1e6"
    );
}
