# tiergate's default escalation policy.
#
# route  — before any model runs: may this request be served, and from which tier?
# accept — after each tier answers: accept it, escalate to the next tier, hold it for human
#          review, or deny.
#
# Thresholds come from the system card (input.thresholds) and fall back to data.defaults.
# Policy data may set a system's thresholds (data.systems[<id>].thresholds, typically from a
# `tiergate calibrate` report cited beside them): those win, so that a threshold change is a
# reviewed policy version.
package tiergate

import rego.v1

thresholds := object.union(
	object.union(data.defaults.thresholds, object.get(input, "thresholds", {})),
	calibrated_thresholds,
)

calibrated_thresholds := data.systems[input.system.id].thresholds if {
	is_object(data.systems[input.system.id].thresholds)
} else := {}

last_tier := input.system.tier_count - 1

# During a live experiment (input.experiment), high-stakes requests stay on the control
# version, whichever arm they were assigned, unless the system sets
# `experiment_high_stakes_on_control: false`. The gateway keeps such requests out of the
# experiment's comparison.
high_stakes_stay_on_control if {
	is_object(input.experiment)
	object.get(thresholds, "experiment_high_stakes_on_control", true) != false
}

stakes := object.get(input.request, "stakes", "normal")

use_case := object.get(input.request, "use_case", "general")

route := {
	"action": "deny",
	"reasons": [sprintf("use case '%s' is blocked by policy", [use_case])],
} if {
	use_case in data.defaults.blocked_use_cases
} else := {
	"action": "serve",
	"tier": last_tier,
	"experiment": "control",
	"reasons": [sprintf("declared stakes '%s': start on the largest tier of the experiment's control version", [stakes])],
} if {
	stakes in data.defaults.high_stakes
	high_stakes_stay_on_control
} else := {
	"action": "serve",
	"tier": last_tier,
	"reasons": [sprintf("declared stakes '%s': start on the largest tier", [stakes])],
} if {
	stakes in data.defaults.high_stakes
} else := {
	"action": "serve",
	"tier": 0,
	"reasons": ["routine request: smallest tier first"],
}

# Logprobs rounded to 3 decimals keep reasons readable.
mean_logprob := round(input.attempt.signals.mean_logprob * 1000) / 1000

# A per-tier threshold (min_mean_logprob_by_tier[i]) overrides the common one for tier i.
min_mean := thresholds.min_mean_logprob_by_tier[input.attempt.tier] if {
	is_number(thresholds.min_mean_logprob_by_tier[input.attempt.tier])
} else := thresholds.min_mean_logprob

failed if input.attempt.error != null

# The optional self-check (system card `escalation.self_check`): the model's own P(yes) that its
# answer is correct must reach `min_self_check_yes` when the card sets one. A missing signal
# (the check gave no yes/no) counts as failing it.
self_check_yes := round(object.get(input.attempt.signals, "self_check_yes", 0) * 1000) / 1000

self_check_fails if {
	is_number(thresholds.min_self_check_yes)
	not object.get(input.attempt.signals, "self_check_yes", -1) >= thresholds.min_self_check_yes
}

# P(correct): the probability that this answer is right, from the tier's confidence model
# (system card tiers[i].confidence_model). Where the tier has a threshold for it
# (min_p_correct_by_tier[i], else min_p_correct), it decides instead of the logprob threshold;
# an answer without a P(correct) fails it (fail closed).
min_p_correct := thresholds.min_p_correct_by_tier[input.attempt.tier] if {
	is_number(thresholds.min_p_correct_by_tier[input.attempt.tier])
} else := thresholds.min_p_correct if {
	is_number(thresholds.min_p_correct)
	not is_array(thresholds.min_p_correct_by_tier)
}

p_correct := round(object.get(input.attempt.signals, "p_correct", 0) * 1000) / 1000

p_correct_fails if {
	is_number(min_p_correct)
	not object.get(input.attempt.signals, "p_correct", -1) >= min_p_correct
}

# The expected cost of a wrong answer against the price of asking the next tier: with
# `error_cost` set (what a wrong answer costs, in the model cards' currency), an answer whose
# (1 - P(correct)) * error_cost exceeds the next tier's estimated cost is escalated.
expected_error_cost := (1 - input.attempt.signals.p_correct) * thresholds.error_cost if {
	is_number(thresholds.error_cost)
	is_number(input.attempt.signals.p_correct)
}

escalating_is_cheaper if {
	input.attempt.tiers_left > 0
	is_number(input.attempt.next_tier_cost_estimate)
	expected_error_cost > input.attempt.next_tier_cost_estimate
}

accept := {
	"action": "escalate",
	"reasons": [sprintf("tier %d failed (%s): try the next tier", [input.attempt.tier, input.attempt.error])],
} if {
	failed
	input.attempt.tiers_left > 0
} else := {
	"action": "deny",
	"reasons": [sprintf("tier %d failed (%s) and no tier is left", [input.attempt.tier, input.attempt.error])],
} if {
	failed
} else := {
	"action": "escalate",
	"reasons": [sprintf("self-check P(yes) %v is below %v: escalate", [self_check_yes, thresholds.min_self_check_yes])],
} if {
	self_check_fails
	input.attempt.tiers_left > 0
} else := {
	"action": "review",
	"reasons": [sprintf("self-check P(yes) %v is below %v on the last tier: hold for human review", [self_check_yes, thresholds.min_self_check_yes])],
} if {
	self_check_fails
} else := {
	"action": "escalate",
	"reasons": [sprintf("P(correct) %v is below %v: escalate", [p_correct, min_p_correct])],
} if {
	p_correct_fails
	input.attempt.tiers_left > 0
} else := {
	"action": "review",
	"reasons": [sprintf("P(correct) %v is below %v on the last tier: hold for human review", [p_correct, min_p_correct])],
} if {
	p_correct_fails
} else := {
	"action": "escalate",
	"reasons": [sprintf(
		"expected cost of a wrong answer (1 - P(correct) %v) x %v = %v exceeds the next tier's estimated cost %v: escalate",
		[p_correct, thresholds.error_cost, round(expected_error_cost * 1000000) / 1000000, input.attempt.next_tier_cost_estimate],
	)],
} if {
	escalating_is_cheaper
} else := {
	"action": "accept",
	"reasons": [sprintf("P(correct) %v is at or above %v", [p_correct, min_p_correct])],
} if {
	is_number(min_p_correct)
} else := {
	"action": "accept",
	"reasons": [sprintf("mean token logprob %v is at or above the threshold %v", [mean_logprob, min_mean])],
} if {
	input.attempt.signals.mean_logprob >= min_mean
} else := {
	"action": "escalate",
	"reasons": [sprintf("mean token logprob %v is below the threshold %v: escalate", [mean_logprob, min_mean])],
} if {
	input.attempt.tiers_left > 0
} else := {
	"action": "review",
	"reasons": [sprintf("mean token logprob %v is below the threshold %v on the last tier: hold for human review", [mean_logprob, min_mean])],
}
