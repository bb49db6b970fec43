namespace Loupe.Models.Loading;

/// <summary>
/// TransformerLens's model names — what <c>HookedTransformer.from_pretrained</c> accepts: its official names and their aliases
/// (<c>gpt2-small</c>, <c>pythia-70m</c>, <c>gemma-2-2b</c>, <c>tiny-stories-33M</c>, …), matched without regard to case as
/// TransformerLens matches them — mapped to the Hugging Face ids they stand for, for the families Loupe runs (from
/// TransformerLens 2's <c>OFFICIAL_MODEL_NAMES</c> and <c>MODEL_ALIASES</c>). A researcher's habit then carries over:
/// <c>--model gpt2-small</c> loads <c>gpt2</c>.
/// </summary>
public static class TransformerLensNames
{
    // (Hugging Face id, TransformerLens aliases); the id itself is a name too.
    static readonly (string HubId, string[] Aliases)[] s_table =
    [
        ("gpt2-medium", []),
        ("gpt2-large", []),
        ("gpt2-xl", []),
        ("gpt2", ["gpt2-small"]),
        ("distilgpt2", ["distillgpt2", "distill-gpt2", "distil-gpt2", "gpt2-xs"]),
        ("stanford-crfm/alias-gpt2-small-x21", ["stanford-gpt2-small-a", "alias-gpt2-small-x21", "gpt2-mistral-small-a", "gpt2-stanford-small-a"]),
        ("stanford-crfm/battlestar-gpt2-small-x49", ["stanford-gpt2-small-b", "battlestar-gpt2-small-x49", "gpt2-mistral-small-b", "gpt2-stanford-small-b"]),
        ("stanford-crfm/caprica-gpt2-small-x81", ["stanford-gpt2-small-c", "caprica-gpt2-small-x81", "gpt2-mistral-small-c", "gpt2-stanford-small-c"]),
        ("stanford-crfm/darkmatter-gpt2-small-x343", ["stanford-gpt2-small-d", "darkmatter-gpt2-small-x343", "gpt2-mistral-small-d", "gpt2-stanford-small-d"]),
        ("stanford-crfm/expanse-gpt2-small-x777", ["stanford-gpt2-small-e", "expanse-gpt2-small-x777", "gpt2-mistral-small-e", "gpt2-stanford-small-e"]),
        ("stanford-crfm/arwen-gpt2-medium-x21", ["stanford-gpt2-medium-a", "arwen-gpt2-medium-x21", "gpt2-medium-small-a", "gpt2-stanford-medium-a"]),
        ("stanford-crfm/beren-gpt2-medium-x49", ["stanford-gpt2-medium-b", "beren-gpt2-medium-x49", "gpt2-medium-small-b", "gpt2-stanford-medium-b"]),
        ("stanford-crfm/celebrimbor-gpt2-medium-x81", ["stanford-gpt2-medium-c", "celebrimbor-gpt2-medium-x81", "gpt2-medium-small-c", "gpt2-stanford-medium-c"]),
        ("stanford-crfm/durin-gpt2-medium-x343", ["stanford-gpt2-medium-d", "durin-gpt2-medium-x343", "gpt2-medium-small-d", "gpt2-stanford-medium-d"]),
        ("stanford-crfm/eowyn-gpt2-medium-x777", ["stanford-gpt2-medium-e", "eowyn-gpt2-medium-x777", "gpt2-medium-small-e", "gpt2-stanford-medium-e"]),
        ("EleutherAI/gpt-neo-125M", ["gpt-neo-125M", "gpt-neo-small", "neo-small", "neo"]),
        ("EleutherAI/gpt-neo-1.3B", ["gpt-neo-1.3B", "gpt-neo-medium", "neo-medium"]),
        ("EleutherAI/gpt-neo-2.7B", ["gpt-neo-2.7B", "gpt-neo-large", "neo-large"]),
        ("EleutherAI/gpt-neox-20b", ["gpt-neox-20b", "gpt-neox", "neox"]),
        ("EleutherAI/pythia-14m", ["pythia-14m"]),
        ("EleutherAI/pythia-31m", ["pythia-31m"]),
        ("EleutherAI/pythia-70m", ["pythia-70m", "pythia", "EleutherAI/pythia-19m", "pythia-19m"]),
        ("EleutherAI/pythia-160m", ["pythia-160m", "EleutherAI/pythia-125m", "pythia-125m"]),
        ("EleutherAI/pythia-410m", ["pythia-410m", "EleutherAI/pythia-350m", "pythia-350m"]),
        ("EleutherAI/pythia-1b", ["pythia-1b", "EleutherAI/pythia-800m", "pythia-800m"]),
        ("EleutherAI/pythia-1.4b", ["pythia-1.4b", "EleutherAI/pythia-1.3b", "pythia-1.3b"]),
        ("EleutherAI/pythia-2.8b", ["pythia-2.8b", "EleutherAI/pythia-2.7b", "pythia-2.7b"]),
        ("EleutherAI/pythia-6.9b", ["pythia-6.9b", "EleutherAI/pythia-6.7b", "pythia-6.7b"]),
        ("EleutherAI/pythia-12b", ["pythia-12b", "EleutherAI/pythia-13b", "pythia-13b"]),
        ("EleutherAI/pythia-70m-deduped", ["pythia-70m-deduped", "EleutherAI/pythia-19m-deduped", "pythia-19m-deduped"]),
        ("EleutherAI/pythia-160m-deduped", ["pythia-160m-deduped", "EleutherAI/pythia-125m-deduped", "pythia-125m-deduped"]),
        ("EleutherAI/pythia-410m-deduped", ["pythia-410m-deduped", "EleutherAI/pythia-350m-deduped", "pythia-350m-deduped"]),
        ("EleutherAI/pythia-1b-deduped", ["pythia-1b-deduped", "EleutherAI/pythia-800m-deduped", "pythia-800m-deduped"]),
        ("EleutherAI/pythia-1.4b-deduped", ["pythia-1.4b-deduped", "EleutherAI/pythia-1.3b-deduped", "pythia-1.3b-deduped"]),
        ("EleutherAI/pythia-2.8b-deduped", ["pythia-2.8b-deduped", "EleutherAI/pythia-2.7b-deduped", "pythia-2.7b-deduped"]),
        ("EleutherAI/pythia-6.9b-deduped", ["pythia-6.9b-deduped", "EleutherAI/pythia-6.7b-deduped", "pythia-6.7b-deduped"]),
        ("EleutherAI/pythia-12b-deduped", ["pythia-12b-deduped", "EleutherAI/pythia-13b-deduped", "pythia-13b-deduped"]),
        ("EleutherAI/pythia-70m-v0", ["pythia-70m-v0", "pythia-v0", "EleutherAI/pythia-19m-v0", "pythia-19m-v0"]),
        ("EleutherAI/pythia-160m-v0", ["pythia-160m-v0", "EleutherAI/pythia-125m-v0", "pythia-125m-v0"]),
        ("EleutherAI/pythia-410m-v0", ["pythia-410m-v0", "EleutherAI/pythia-350m-v0", "pythia-350m-v0"]),
        ("EleutherAI/pythia-1b-v0", ["pythia-1b-v0", "EleutherAI/pythia-800m-v0", "pythia-800m-v0"]),
        ("EleutherAI/pythia-1.4b-v0", ["pythia-1.4b-v0", "EleutherAI/pythia-1.3b-v0", "pythia-1.3b-v0"]),
        ("EleutherAI/pythia-2.8b-v0", ["pythia-2.8b-v0", "EleutherAI/pythia-2.7b-v0", "pythia-2.7b-v0"]),
        ("EleutherAI/pythia-6.9b-v0", ["pythia-6.9b-v0", "EleutherAI/pythia-6.7b-v0", "pythia-6.7b-v0"]),
        ("EleutherAI/pythia-12b-v0", ["pythia-12b-v0", "EleutherAI/pythia-13b-v0", "pythia-13b-v0"]),
        ("EleutherAI/pythia-70m-deduped-v0", ["pythia-70m-deduped-v0", "EleutherAI/pythia-19m-deduped-v0", "pythia-19m-deduped-v0"]),
        ("EleutherAI/pythia-160m-deduped-v0", ["pythia-160m-deduped-v0", "EleutherAI/pythia-125m-deduped-v0", "pythia-125m-deduped-v0"]),
        ("EleutherAI/pythia-410m-deduped-v0", ["pythia-410m-deduped-v0", "EleutherAI/pythia-350m-deduped-v0", "pythia-350m-deduped-v0"]),
        ("EleutherAI/pythia-1b-deduped-v0", ["pythia-1b-deduped-v0", "EleutherAI/pythia-800m-deduped-v0", "pythia-800m-deduped-v0"]),
        ("EleutherAI/pythia-1.4b-deduped-v0", ["pythia-1.4b-deduped-v0", "EleutherAI/pythia-1.3b-deduped-v0", "pythia-1.3b-deduped-v0"]),
        ("EleutherAI/pythia-2.8b-deduped-v0", ["pythia-2.8b-deduped-v0", "EleutherAI/pythia-2.7b-deduped-v0", "pythia-2.7b-deduped-v0"]),
        ("EleutherAI/pythia-6.9b-deduped-v0", ["pythia-6.9b-deduped-v0", "EleutherAI/pythia-6.7b-deduped-v0", "pythia-6.7b-deduped-v0"]),
        ("EleutherAI/pythia-12b-deduped-v0", ["pythia-12b-deduped-v0", "EleutherAI/pythia-13b-deduped-v0", "pythia-13b-deduped-v0"]),
        ("EleutherAI/pythia-160m-seed1", ["pythia-160m-seed1", "EleutherAI/pythia-125m-seed1", "pythia-125m-seed1"]),
        ("EleutherAI/pythia-160m-seed2", ["pythia-160m-seed2", "EleutherAI/pythia-125m-seed2", "pythia-125m-seed2"]),
        ("EleutherAI/pythia-160m-seed3", ["pythia-160m-seed3", "EleutherAI/pythia-125m-seed3", "pythia-125m-seed3"]),
        ("roneneldan/TinyStories-1M", ["tiny-stories-1M"]),
        ("roneneldan/TinyStories-Instruct-1M", ["tiny-stories-instruct-1M"]),
        ("roneneldan/TinyStories-3M", ["tiny-stories-3M"]),
        ("roneneldan/TinyStories-Instruct-3M", ["tiny-stories-instruct-3M"]),
        ("roneneldan/TinyStories-8M", ["tiny-stories-8M"]),
        ("roneneldan/TinyStories-Instruct-8M", ["tiny-stories-instruct-8M"]),
        ("roneneldan/TinyStories-28M", ["tiny-stories-28M"]),
        ("roneneldan/TinyStories-Instruct-28M", ["tiny-stories-instruct-28M"]),
        ("roneneldan/TinyStories-33M", ["tiny-stories-33M"]),
        ("roneneldan/TinyStories-Instruct-33M", ["tiny-stories-instruct-33M"]),
        ("roneneldan/TinyStories-1Layer-21M", ["tiny-stories-1L-21M"]),
        ("roneneldan/TinyStories-2Layers-33M", ["tiny-stories-2L-33M"]),
        ("roneneldan/TinyStories-Instuct-1Layer-21M", ["tiny-stories-instruct-1L-21M"]),
        ("roneneldan/TinyStories-Instruct-2Layers-33M", ["tiny-stories-instruct-2L-33M"]),
        ("stabilityai/stablelm-base-alpha-3b", ["stablelm-base-alpha-3b", "stablelm-base-3b"]),
        ("stabilityai/stablelm-base-alpha-7b", ["stablelm-base-alpha-7b", "stablelm-base-7b"]),
        ("stabilityai/stablelm-tuned-alpha-3b", ["stablelm-tuned-alpha-3b", "stablelm-tuned-3b"]),
        ("stabilityai/stablelm-tuned-alpha-7b", ["stablelm-tuned-alpha-7b", "stablelm-tuned-7b"]),
        ("meta-llama/Llama-2-7b-hf", ["Llama-2-7b"]),
        ("meta-llama/Llama-2-7b-chat-hf", ["Llama-2-7b-chat"]),
        ("meta-llama/Llama-2-13b-hf", ["Llama-2-13b"]),
        ("meta-llama/Llama-2-13b-chat-hf", ["Llama-2-13b-chat"]),
        ("meta-llama/Llama-2-70b-chat-hf", ["Llama-2-70b-chat", "meta-llama-2-70b-chat-hf"]),
        ("codellama/CodeLlama-7b-hf", ["CodeLlama-7b-hf", "CodeLlamallama-2-7b"]),
        ("codellama/CodeLlama-7b-Python-hf", ["CodeLlama-7b-Python-hf", "CodeLlama-7b-python"]),
        ("codellama/CodeLlama-7b-Instruct-hf", ["CodeLlama-7b-Instruct-hf", "CodeLlama-7b-instruct"]),
        ("mistralai/Mistral-7B-v0.1", ["mistral-7b"]),
        ("mistralai/Mistral-7B-Instruct-v0.1", ["mistral-7b-instruct"]),
        ("microsoft/Phi-3-mini-4k-instruct", ["phi-3"]),
        ("Qwen/Qwen1.5-0.5B", ["qwen1.5-0.5b"]),
        ("Qwen/Qwen1.5-0.5B-Chat", ["qwen1.5-0.5b-chat"]),
        ("Qwen/Qwen1.5-1.8B", ["qwen1.5-1.8b"]),
        ("Qwen/Qwen1.5-1.8B-Chat", ["qwen1.5-1.8b-chat"]),
        ("Qwen/Qwen1.5-4B", ["qwen1.5-4b"]),
        ("Qwen/Qwen1.5-4B-Chat", ["qwen1.5-4b-chat"]),
        ("Qwen/Qwen1.5-7B", ["qwen1.5-7b"]),
        ("Qwen/Qwen1.5-7B-Chat", ["qwen1.5-7b-chat"]),
        ("Qwen/Qwen1.5-14B", ["qwen1.5-14b"]),
        ("Qwen/Qwen1.5-14B-Chat", ["qwen1.5-14b-chat"]),
        ("google/gemma-2-2b", ["gemma-2-2b"]),
        ("google/gemma-2-2b-it", ["gemma-2-2b-it"]),
        ("google/gemma-2-9b", ["gemma-2-9b"]),
        ("google/gemma-2-9b-it", ["gemma-2-9b-it"]),
        ("google/gemma-2-27b", ["gemma-2-27b"]),
        ("google/gemma-2-27b-it", ["gemma-2-27b-it"]),
        ("01-ai/Yi-6B", ["yi-6b"]),
        ("01-ai/Yi-34B", ["yi-34b"]),
        ("01-ai/Yi-6B-Chat", ["yi-6b-chat"]),
        ("01-ai/Yi-34B-Chat", ["yi-34b-chat"]),
        ("ai-forever/mGPT", ["mGPT"]),
        ("bert-base-cased", []),
        // NeelNanda's toy models (config.json of their own + model_final.pth); the SoLU *_old runs store other tensor names and are not listed
        ("NeelNanda/SoLU_1L512W_C4_Code", ["solu-1l", "solu-1l-new", "solu-1l-c4-code"]),
        ("NeelNanda/SoLU_2L512W_C4_Code", ["solu-2l", "solu-2l-new", "solu-2l-c4-code"]),
        ("NeelNanda/SoLU_3L512W_C4_Code", ["solu-3l", "solu-3l-new", "solu-3l-c4-code"]),
        ("NeelNanda/SoLU_4L512W_C4_Code", ["solu-4l", "solu-4l-new", "solu-4l-c4-code"]),
        ("NeelNanda/SoLU_6L768W_C4_Code", ["solu-6l", "solu-6l-new", "solu-6l-c4-code"]),
        ("NeelNanda/SoLU_8L1024W_C4_Code", ["solu-8l", "solu-8l-new", "solu-8l-c4-code"]),
        ("NeelNanda/SoLU_10L1280W_C4_Code", ["solu-10l", "solu-10l-new", "solu-10l-c4-code"]),
        ("NeelNanda/SoLU_12L1536W_C4_Code", ["solu-12l", "solu-12l-new", "solu-12l-c4-code"]),
        ("NeelNanda/GELU_1L512W_C4_Code", ["gelu-1l", "gelu-1l-new", "gelu-1l-c4-code"]),
        ("NeelNanda/GELU_2L512W_C4_Code", ["gelu-2l", "gelu-2l-new", "gelu-2l-c4-code"]),
        ("NeelNanda/GELU_3L512W_C4_Code", ["gelu-3l", "gelu-3l-new", "gelu-3l-c4-code"]),
        ("NeelNanda/GELU_4L512W_C4_Code", ["gelu-4l", "gelu-4l-new", "gelu-4l-c4-code"]),
        ("NeelNanda/Attn_Only_1L512W_C4_Code", ["attn-only-1l", "attn-only-1l-new", "attn-only-1l-c4-code"]),
        ("NeelNanda/Attn_Only_2L512W_C4_Code", ["attn-only-2l", "attn-only-2l-new", "attn-only-2l-c4-code"]),
        ("NeelNanda/Attn_Only_3L512W_C4_Code", ["attn-only-3l", "attn-only-3l-new", "attn-only-3l-c4-code"]),
        ("NeelNanda/Attn_Only_4L512W_C4_Code", ["attn-only-4l", "attn-only-4l-new", "attn-only-4l-c4-code"]),
        ("NeelNanda/Attn-Only-2L512W-Shortformer-6B-big-lr", ["attn-only-2l-demo", "attn-only-2l-shortformer-6b-big-lr", "attn-only-2l-induction-demo", "attn-only-demo"]),
        ("ArthurConmy/redwood_attn_2l", ["redwood_attn_2l"]),
    ];

    static readonly Dictionary<string, string> s_byName = Build();

    static Dictionary<string, string> Build()
    {
        var map = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var (hubId, aliases) in s_table)
        {
            map.TryAdd(hubId, hubId);
            foreach (var alias in aliases) map.TryAdd(alias, hubId);
        }
        return map;
    }

    /// <summary>Every name known, with the Hugging Face id it stands for.</summary>
    public static IReadOnlyDictionary<string, string> All => s_byName;

    /// <summary>
    /// The Hugging Face id a TransformerLens name stands for when it differs from <paramref name="name"/> (an alias, or the
    /// id spelled in another case); null when <paramref name="name"/> is not such a name or is the id itself.
    /// </summary>
    public static string? HubIdFor(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return s_byName.TryGetValue(name, out var id) && !string.Equals(id, name, StringComparison.Ordinal) ? id : null;
    }
}
