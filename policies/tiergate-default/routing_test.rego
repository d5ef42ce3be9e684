package tiergate_test

import rego.v1

system := {"id": "support-triage", "version": 1, "tier_count": 2}

routine := {"use_case": "general", "stakes": "normal"}

attempt(tier, mean, left) := {
	"tier": tier,
	"tiers_left": left,
	"error": null,
	"signals": {"mean_logprob": mean, "min_logprob": mean - 1, "completion_tokens": 20, "finish_reason": "stop"},
}

test_routine_request_served_small if {
	decision := data.tiergate.route with input as {"request": routine, "system": system}
	decision.action == "serve"
	decision.tier == 0
}

test_declared_high_stakes_start_on_the_large_tier if {
	decision := data.tiergate.route with input as {"request": {"stakes": "high"}, "system": system}
	decision.action == "serve"
	decision.tier == 1
}

test_blocked_use_case_denied if {
	decision := data.tiergate.route with input as {"request": {"use_case": "medical-diagnosis"}, "system": system}
	decision.action == "deny"
}

test_confident_answer_accepted if {
	decision := data.tiergate.accept with input as {"request": routine, "system": system, "attempt": attempt(0, -0.2, 1)}
	decision.action == "accept"
}

test_low_confidence_escalated if {
	decision := data.tiergate.accept with input as {"request": routine, "system": system, "attempt": attempt(0, -2.5, 1)}
	decision.action == "escalate"
}

test_last_tier_low_confidence_sent_to_review if {
	decision := data.tiergate.accept with input as {"request": routine, "system": system, "attempt": attempt(1, -2.5, 0)}
	decision.action == "review"
}

test_system_card_threshold_overrides_the_default if {
	strict := {"min_mean_logprob": -0.1}
	decision := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": strict, "attempt": attempt(0, -0.2, 1)}
	decision.action == "escalate"
}

test_failed_tier_escalated_then_denied_on_the_last if {
	failed := object.union(attempt(0, 0, 1), {"error": "timeout"})
	first := data.tiergate.accept with input as {"request": routine, "system": system, "attempt": failed}
	first.action == "escalate"
	last := data.tiergate.accept with input as {"request": routine, "system": system, "attempt": object.union(failed, {"tier": 1, "tiers_left": 0})}
	last.action == "deny"
}

test_per_tier_threshold_overrides_the_common_one if {
	by_tier := {"min_mean_logprob": -5, "min_mean_logprob_by_tier": [-0.1, -5]}
	small := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": by_tier, "attempt": attempt(0, -0.2, 1)}
	small.action == "escalate"
	large := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": by_tier, "attempt": attempt(1, -0.2, 0)}
	large.action == "accept"
}

test_policy_data_thresholds_override_the_system_card if {
	card := {"min_mean_logprob": -1.0}
	calibrated := {"support-triage": {"thresholds": {"min_mean_logprob_by_tier": [-0.1, -1.0]}}}
	decision := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": card, "attempt": attempt(0, -0.2, 1)}
		with data.systems as calibrated
	decision.action == "escalate"
	other := data.tiergate.accept with input as {"request": routine, "system": object.union(system, {"id": "other"}), "thresholds": card, "attempt": attempt(0, -0.2, 1)}
		with data.systems as calibrated
	other.action == "accept"
}

test_a_failed_self_check_escalates_a_confident_answer if {
	sure := {"min_mean_logprob": -1.0, "min_self_check_yes": 0.6}
	doubtful := object.union(attempt(0, -0.2, 1), {"signals": {"mean_logprob": -0.2, "self_check_yes": 0.3}})
	escalated := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": sure, "attempt": doubtful}
	escalated.action == "escalate"
	convinced := object.union(attempt(0, -0.2, 1), {"signals": {"mean_logprob": -0.2, "self_check_yes": 0.9}})
	accepted := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": sure, "attempt": convinced}
	accepted.action == "accept"
}

confident(tier, p, left) := object.union(attempt(tier, -3.0, left), {"signals": {"mean_logprob": -3.0, "p_correct": p}})

test_p_correct_decides_where_the_tier_has_a_threshold_for_it if {
	t := {"min_p_correct": 0.6}
	kept := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": t, "attempt": confident(0, 0.7, 1)}
	kept.action == "accept"
	kept.reasons == ["P(correct) 0.7 is at or above 0.6"]
	unsure := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": t, "attempt": confident(0, 0.4, 1)}
	unsure.action == "escalate"
	unsure.reasons == ["P(correct) 0.4 is below 0.6: escalate"]
	last := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": t, "attempt": confident(1, 0.4, 0)}
	last.action == "review"
}

test_a_missing_p_correct_fails_its_threshold if {
	t := {"min_p_correct": 0.6}
	decision := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": t, "attempt": attempt(0, -0.1, 1)}
	decision.action == "escalate"
}

test_a_tier_without_a_p_correct_threshold_keeps_the_logprob_rule if {
	t := {"min_p_correct_by_tier": [0.6, null], "min_mean_logprob_by_tier": [-1.0, -2.0]}
	decision := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": t, "attempt": confident(1, 0.1, 0)}
	decision.action == "review"
	contains(decision.reasons[0], "mean token logprob -3 is below the threshold -2")
}

test_escalation_when_a_wrong_answer_is_expected_to_cost_more_than_the_next_tier if {
	t := {"error_cost": 0.01}
	cheap := object.union(confident(0, 0.9, 1), {"next_tier_cost_estimate": 0.0001, "signals": {"mean_logprob": -0.1, "p_correct": 0.9}})
	# (1 - 0.9) x 0.01 = 0.001 > 0.0001: escalating is cheaper than the expected error.
	decision := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": t, "attempt": cheap}
	decision.action == "escalate"
	contains(decision.reasons[0], "= 0.001 exceeds the next tier's estimated cost 0.0001")
	sure := object.union(cheap, {"signals": {"mean_logprob": -0.1, "p_correct": 0.995}})
	kept := data.tiergate.accept with input as {"request": routine, "system": system, "thresholds": t, "attempt": sure}
	kept.action == "accept"
}

test_high_stakes_requests_stay_on_an_experiments_control if {
	decision := data.tiergate.route with input as {
		"request": {"stakes": "high", "use_case": "general"},
		"system": {"id": "s", "tier_count": 2},
		"experiment": {"id": "e", "version": 1, "arm": "treatment"},
	}
	decision.experiment == "control"
	decision.tier == 1
}

test_routine_requests_take_part_in_an_experiment if {
	decision := data.tiergate.route with input as {
		"request": {"stakes": "normal", "use_case": "general"},
		"system": {"id": "s", "tier_count": 2},
		"experiment": {"id": "e", "version": 1, "arm": "treatment"},
	}
	not decision.experiment
	decision.tier == 0
}

test_a_system_may_let_high_stakes_requests_into_the_experiment if {
	decision := data.tiergate.route with input as {
		"request": {"stakes": "high", "use_case": "general"},
		"system": {"id": "s", "tier_count": 2},
		"thresholds": {"experiment_high_stakes_on_control": false},
		"experiment": {"id": "e", "version": 1, "arm": "treatment"},
	}
	not decision.experiment
}

test_without_an_experiment_high_stakes_routing_is_unchanged if {
	decision := data.tiergate.route with input as {"request": {"stakes": "high", "use_case": "general"}, "system": {"id": "s", "tier_count": 2}}
	not decision.experiment
	decision.tier == 1
}
