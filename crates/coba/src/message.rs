//! The weights rank 0 broadcasts for one step, as one flat `f64` buffer (what the collectives
//! move): `[step, source, w_0, ..., w_{K-1}]`.
//!
//! One encode and one decode, so the trainer never packs the message by hand; the decode
//! checks that the message is for the step the receiver is at (every rank runs the same step).

use crate::{Source, StepWeights, WeightError};

/// Step `step`'s weights and where they come from.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightMessage {
    /// The training step the weights are for.
    pub step: u64,
    /// Warm-up, computed or carried.
    pub source: Source,
    /// K weights (config task order).
    pub weights: Vec<f64>,
}

impl From<&StepWeights> for WeightMessage {
    fn from(w: &StepWeights) -> Self {
        WeightMessage {
            step: w.step,
            source: w.source,
            weights: w.weights.clone(),
        }
    }
}

impl WeightMessage {
    /// Length of the encoded message for `k` tasks (the buffer receivers pass in).
    pub fn encoded_len(k: usize) -> usize {
        k + 2
    }

    /// `[step, source code, weights...]`; steps are exact in `f64` below 2^53.
    pub fn encode(&self) -> Vec<f64> {
        let mut buf = Vec::with_capacity(Self::encoded_len(self.weights.len()));
        buf.push(self.step as f64);
        buf.push(match self.source {
            Source::Warmup => 0.0,
            Source::Computed => 1.0,
            Source::Carried => 2.0,
        });
        buf.extend_from_slice(&self.weights);
        buf
    }

    /// Reads a message received during step `expected_step`.
    ///
    /// # Errors
    /// [`WeightError::OutOfOrder`] when the message is for another step, has an unknown source
    /// code or is shorter than the header.
    pub fn decode(buf: &[f64], expected_step: u64) -> Result<Self, WeightError> {
        let bad = |reason: String| WeightError::OutOfOrder {
            step: expected_step,
            reason,
        };
        let [step, source, weights @ ..] = buf else {
            return Err(bad(format!("a weight message of {} values", buf.len())));
        };
        if *step != expected_step as f64 {
            return Err(bad(format!("received the weights of step {step}")));
        }
        let source = match *source {
            0.0 => Source::Warmup,
            1.0 => Source::Computed,
            2.0 => Source::Carried,
            other => return Err(bad(format!("unknown weight source code {other}"))),
        };
        Ok(WeightMessage {
            step: expected_step,
            source,
            weights: weights.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_message_round_trips_and_checks_the_step() {
        for source in [Source::Warmup, Source::Computed, Source::Carried] {
            let m = WeightMessage {
                step: 41,
                source,
                weights: vec![0.25, 0.5, 0.25],
            };
            let buf = m.encode();
            assert_eq!(buf.len(), WeightMessage::encoded_len(3));
            assert_eq!(buf[0], 41.0);
            assert_eq!(&buf[2..], &[0.25, 0.5, 0.25]);
            assert_eq!(WeightMessage::decode(&buf, 41).unwrap(), m);
            assert!(matches!(
                WeightMessage::decode(&buf, 42),
                Err(WeightError::OutOfOrder { step: 42, .. })
            ));
        }
        assert!(WeightMessage::decode(&[3.0, 7.0, 1.0], 3).is_err());
        assert!(WeightMessage::decode(&[3.0], 3).is_err());
    }
}
