//! How the generation scheduler shares each iteration between the running streams and newcomers' prompts, as
//! pure state (no tensors, threads or clock), like `engine::batcher`.
//!
//! Why a budget: a prompt's prefill (running it through the model before the first token) takes the same thread
//! as the running streams' steps. Prefilled whole, a burst of long prompts stalled every running stream until all
//! of them were through. With `generation.prefill_budget_tokens` per iteration, a running stream waits for at most
//! about one budget of prefill between two of its tokens; a longer prompt is prefilled in chunks over several
//! iterations (the model's state carries from one chunk to the next), the prompts sharing the budget.

/// One forward pass of prefill: every member advances by `tokens` tokens of its prompt. Members are either all
/// `fresh` (nothing run yet: they start from the empty state) or all continuing (their states join on the
/// state's batch dimension), so that one forward pass can take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefillPass {
    /// Indices into the prompts given to `plan`.
    pub members: Vec<usize>,
    pub tokens: usize,
    pub fresh: bool,
}

/// A prompt being prefilled: its length and how much of it has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptProgress {
    pub length: usize,
    pub done: usize,
}

impl PromptProgress {
    pub fn remaining(self) -> usize {
        self.length - self.done
    }

    pub fn finished(self) -> bool {
        self.done >= self.length
    }
}

/// This iteration's prefill: `budget` tokens shared evenly by the prompts (oldest first when it does not stretch to
/// all of them; at least one token runs, whatever the budget), grouped into as few forward passes as chunk
/// lengths allow.
///
/// Shared rather than first come, first served: prompts that advance by the same number of tokens run in one
/// batched forward pass, and for a recurrent model a pass costs about its number of time steps, not of tokens
/// (bench/RESULTS.md: 16 prompts of 4000 tokens run in 2 s batched, 7 s one after another).
pub fn plan(prompts: &[PromptProgress], budget: usize) -> Vec<PrefillPass> {
    let mut left = budget.max(1);
    let unfinished = prompts.iter().filter(|p| !p.finished()).count().max(1);
    let share = (left / unfinished).max(1);
    let mut passes: Vec<PrefillPass> = Vec::new();
    for (index, prompt) in prompts.iter().enumerate() {
        if left == 0 {
            break;
        }
        let tokens = prompt.remaining().min(share).min(left);
        if tokens == 0 {
            continue;
        }
        left -= tokens;
        let fresh = prompt.done == 0;
        match passes.iter_mut().find(|pass| pass.tokens == tokens && pass.fresh == fresh) {
            Some(pass) => pass.members.push(index),
            None => passes.push(PrefillPass { members: vec![index], tokens, fresh }),
        }
    }
    passes
}

/// How many newcomers may start prefilling: the free places of `max_sequences`, which running and prefilling
/// sequences share.
pub fn free_places(max_sequences: usize, running: usize, prefilling: usize) -> usize {
    max_sequences.saturating_sub(running + prefilling)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(length: usize) -> PromptProgress {
        PromptProgress { length, done: 0 }
    }

    fn tokens_planned(passes: &[PrefillPass]) -> usize {
        passes.iter().map(|p| p.tokens * p.members.len()).sum()
    }

    #[test]
    fn short_prompts_of_one_length_run_in_one_pass() {
        let passes = plan(&[fresh(8), fresh(8), fresh(8)], 512);
        assert_eq!(passes, vec![PrefillPass { members: vec![0, 1, 2], tokens: 8, fresh: true }]);
    }

    #[test]
    fn prompts_of_different_lengths_run_in_a_pass_each() {
        let passes = plan(&[fresh(8), fresh(5), fresh(8)], 512);
        assert_eq!(
            passes,
            vec![
                PrefillPass { members: vec![0, 2], tokens: 8, fresh: true },
                PrefillPass { members: vec![1], tokens: 5, fresh: true },
            ]
        );
    }

    #[test]
    fn the_budget_is_shared_so_that_long_prompts_run_together() {
        let passes = plan(&[fresh(4000), fresh(4000), fresh(10)], 512);
        assert_eq!(
            passes,
            vec![
                PrefillPass { members: vec![0, 1], tokens: 170, fresh: true },
                PrefillPass { members: vec![2], tokens: 10, fresh: true },
            ]
        );
        assert!(tokens_planned(&passes) <= 512);
    }

    #[test]
    fn a_burst_of_long_prompts_runs_in_one_pass_per_iteration_within_the_budget() {
        let mut prompts = vec![fresh(4096); 16];
        let mut iterations = 0;
        while prompts.iter().any(|p| !p.finished()) {
            let passes = plan(&prompts, 512);
            assert_eq!(passes.len(), 1, "{passes:?}");
            assert!(tokens_planned(&passes) <= 512, "{passes:?}");
            for pass in passes {
                for member in pass.members {
                    assert_eq!(pass.fresh, prompts[member].done == 0);
                    prompts[member].done += pass.tokens;
                }
            }
            iterations += 1;
        }
        assert_eq!(iterations, 4096 / (512 / 16));
    }

    #[test]
    fn a_budget_smaller_than_the_prompts_serves_the_oldest() {
        let passes = plan(&[fresh(5), fresh(5), fresh(5)], 2);
        assert_eq!(passes, vec![PrefillPass { members: vec![0, 1], tokens: 1, fresh: true }]);
    }

    #[test]
    fn a_continuing_prompt_never_shares_a_pass_with_a_fresh_one() {
        let prompts = [PromptProgress { length: 20, done: 10 }, fresh(10)];
        let passes = plan(&prompts, 512);
        assert_eq!(
            passes,
            vec![
                PrefillPass { members: vec![0], tokens: 10, fresh: false },
                PrefillPass { members: vec![1], tokens: 10, fresh: true },
            ]
        );
    }

    #[test]
    fn a_zero_budget_still_moves_one_token() {
        assert_eq!(plan(&[fresh(3)], 0), vec![PrefillPass { members: vec![0], tokens: 1, fresh: true }]);
        assert!(plan(&[], 512).is_empty());
    }

    #[test]
    fn running_and_prefilling_sequences_share_the_places() {
        assert_eq!(free_places(32, 16, 10), 6);
        assert_eq!(free_places(32, 30, 10), 0);
    }
}
