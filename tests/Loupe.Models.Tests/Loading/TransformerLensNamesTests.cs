using Loupe.Models.Loading;

namespace Loupe.Models.Tests.Loading;

/// <summary>TransformerLens's model names and aliases stand for the Hugging Face ids TransformerLens loads for them.</summary>
public class TransformerLensNamesTests
{
    [Theory]
    [InlineData("gpt2-small", "gpt2")]
    [InlineData("GPT2-Small", "gpt2")]                                  // TransformerLens matches without regard to case
    [InlineData("distil-gpt2", "distilgpt2")]
    [InlineData("phi-3", "microsoft/Phi-3-mini-4k-instruct")]
    [InlineData("pythia-70m", "EleutherAI/pythia-70m")]
    [InlineData("pythia", "EleutherAI/pythia-70m")]
    [InlineData("pythia-19m", "EleutherAI/pythia-70m")]                 // EleutherAI renamed it
    [InlineData("pythia-125m-deduped-v0", "EleutherAI/pythia-160m-deduped-v0")]
    [InlineData("eleutherai/pythia-410m", "EleutherAI/pythia-410m")]    // the id in another case
    [InlineData("neo-small", "EleutherAI/gpt-neo-125M")]
    [InlineData("tiny-stories-33M", "roneneldan/TinyStories-33M")]
    [InlineData("stanford-gpt2-small-a", "stanford-crfm/alias-gpt2-small-x21")]
    [InlineData("gemma-2-2b", "google/gemma-2-2b")]
    [InlineData("gemma-2-9b-it", "google/gemma-2-9b-it")]
    [InlineData("mistral-7b", "mistralai/Mistral-7B-v0.1")]
    [InlineData("Llama-2-7b", "meta-llama/Llama-2-7b-hf")]
    [InlineData("qwen1.5-0.5b-chat", "Qwen/Qwen1.5-0.5B-Chat")]
    [InlineData("stablelm-base-3b", "stabilityai/stablelm-base-alpha-3b")]
    [InlineData("gelu-2l", "NeelNanda/GELU_2L512W_C4_Code")]
    [InlineData("attn-only-2l", "NeelNanda/Attn_Only_2L512W_C4_Code")]
    [InlineData("solu-12l", "NeelNanda/SoLU_12L1536W_C4_Code")]
    [InlineData("attn-only-demo", "NeelNanda/Attn-Only-2L512W-Shortformer-6B-big-lr")]
    public void A_transformer_lens_name_stands_for_its_hub_id(string name, string hubId) =>
        Assert.Equal(hubId, TransformerLensNames.HubIdFor(name));

    [Theory]
    [InlineData("gpt2")]                       // the hub id itself
    [InlineData("EleutherAI/pythia-70m")]
    [InlineData("google/gemma-2-2b")]
    [InlineData("some-org/some-model")]        // not a TransformerLens name
    [InlineData("gemma-2b")]                   // Gemma 1: a family Loupe does not run, so no name for it
    [InlineData("solu-2l-pile")]               // the old SoLU runs: other tensor names, not run
    public void Other_names_are_left_as_they_are(string name) => Assert.Null(TransformerLensNames.HubIdFor(name));

    [Fact]
    public void Every_name_stands_for_a_valid_hub_id_and_the_ids_are_names_too()
    {
        Assert.True(TransformerLensNames.All.Count > 150, $"{TransformerLensNames.All.Count} names");
        foreach (var (name, id) in TransformerLensNames.All)
        {
            Assert.True(HubClient.IsValidRepoId(id), $"{name} → '{id}' is not a hub id");
            Assert.Equal(id, TransformerLensNames.All[id]);
        }
    }
}
