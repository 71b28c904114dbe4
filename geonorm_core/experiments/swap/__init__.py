"""The swap test: does a model use LayerNorm's mean subtraction?  Take it out and measure.

G9: ``LN_{a,b}(x) = RMSNorm_{g=a}(P x) + b``, eps included.  So a LayerNorm differs
from an RMSNorm with the same gain, bias and eps only by the projection P (the mean subtraction),
and if the hidden states are already orthogonal to **1** the two are the same function.  The
paper infers from angles near 90 degrees that the mean subtraction is redundant; the swap test
checks it causally: run the model as it is and with every norm swapped, on the same tokens.

Directions
----------
``remove_mean``  each LayerNorm becomes ``gain * x / sqrt(mean(x^2) + eps) + bias`` (same gain,
                 bias, eps; Nemotron's ``1 + w`` gain stays ``1 + w``).
``add_mean``     each RMSNorm (any variant: Llama's ``w``, Gemma's ``1 + w``, T5's) computes its own
                 formula on ``P x = x - mean(x)``: by G9 that *is* the LayerNorm with the same gain
                 and eps, and it keeps each variant's gain form and dtype handling exactly.
                 The reverse control: an RMSNorm model never learned to rely on the mean.
``auto``         ``remove_mean`` for a LayerNorm model, ``add_mean`` for an RMSNorm model.

Every site of that kind is swapped, q/k norms included (Gemma-3's): the question is whether the
model depends on mean subtraction anywhere; pass ``sites=`` to swap a subset.  Whisper (wrapped in
:class:`~geonorm_core.models.speech.WhisperDecoderFeed`, as ``geonorm swap-test --model whisper-base``
does) counts as a causal LM: its decoder's next-token loss on the transcript, given the speech,
with the LayerNorms of both stacks swapped (encoder sites count every frame).  Half-precision
inputs are normalized in float32 and cast back, as torch's and Hugging Face's norms do; float32
and float64 inputs are computed in their own dtype.

What is measured
----------------
Per swapped site, per token (each row of the site's input: a token, or a (head, token) pair for
q/k norms; padding excluded), the relative output change ``||y' - y|| / ||y||``:

* **direct**: on the original run, the swapped formula applied to the site's own input against
  the site's output (what the swap changes at that site, before anything downstream moves);
* **end-to-end**: the site's output in the swapped run against the original run (the swap's
  effects accumulated through the model up to that site).

Reading the direct change *(ours)*: to first order in cos θ = cos∠(x, **1**) it is
``|mean(x)| * ||g|| / ||g ⊙ x||`` for a site with gain g and no bias (removing or adding ``mean(x) 1`` moves
the output by ``mean(x) g / rms(x)``).  So an angle near 90 degrees is not enough: where a few
massive-activation dimensions dominate ``mean(x)`` and the gain is near 0 exactly there (Gemma-3),
the mean subtraction spreads them over every dimension the gain amplifies.

End metric, causal LMs: the next-token loss (mean negative log-likelihood per predicted token)
and perplexity of both runs, and their difference, each with a bootstrap confidence interval
over sequences (``scipy.stats.bootstrap``, BCa; sequences resampled in pairs, statistic =
token-weighted loss, or its difference between the runs).  Encoders (a BERT-style sentence
encoder such as all-MiniLM-L6-v2): sentence embeddings are the mean of the last hidden state over
the attention mask, L2-normalized (sentence-transformers' pooling); reported are the cosine
similarity of each sentence's original and swapped embeddings, and the Spearman rank correlation
of all pairwise similarities of :data:`SENTENCES` before and after the swap (does the encoder
still rank sentence pairs the same way?), plus the cosine over the corpus sequences.

Example
-------
>>> with swapped(model) as sites:            # every LayerNorm is an RMSNorm in here
...     out = model(**batch)
>>> result = swap_test(model, tokenizer, batches)
>>> print(result.table()); result.save("geonorm-swap")
"""
from .patching import DIRECTIONS, swapped
from .results import SiteChange, SwapResult
from .run import SENTENCES, swap_test

__all__ = ["DIRECTIONS", "SENTENCES", "SiteChange", "SwapResult", "swap_test", "swapped"]
