using Loupe.Serve.OpenAi;

namespace Loupe.Serve.Tests;

/// <summary>The Jinja subset on real chat templates (ChatML as Qwen/SmolLM ship it, Llama 2's as Meta shipped it).</summary>
public class ChatTemplateTests
{
    public const string ChatMl = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    const string Llama2 = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

    [Fact]
    public void ChatMlRendersAsTransformersDoes()
    {
        var t = new ChatTemplate(ChatMl);
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            t.Render([("system", "Be brief."), ("user", "Hi")], addGenerationPrompt: true, "<s>", "</s>"));
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n", t.Render([("user", "Hi")], addGenerationPrompt: false, null, null));
    }

    [Fact]
    public void Llama2RendersSystemPromptsAndRefusesNonAlternatingRoles()
    {
        var t = new ChatTemplate(Llama2);
        Assert.Equal("<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHello [/INST] Hi there </s><s>[INST] Again [/INST]",
            t.Render([("system", "Be kind."), ("user", "Hello"), ("assistant", " Hi there "), ("user", "Again")], true, "<s>", "</s>"));
        Assert.Equal("<s>[INST] Hello [/INST]", t.Render([("user", "Hello")], true, "<s>", "</s>"));
        var e = Assert.Throws<TemplateRaisedException>(() => t.Render([("user", "a"), ("user", "b")], true, "<s>", "</s>"));
        Assert.Contains("alternate", e.Message);
    }

    // Phi-3's style: a role tag per message, <|end|> after each, the generation prompt or else eos_token at the end.
    const string Phi3 = "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";

    [Fact]
    public void Phi3StyleRendersRoleTagsAndEndsWithThePromptOrEos()
    {
        var t = new ChatTemplate(Phi3);
        Assert.Equal("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n",
            t.Render([("system", "Be brief."), ("user", "Hi")], addGenerationPrompt: true, "<s>", "<|endoftext|>"));
        Assert.Equal("<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|endoftext|>",
            t.Render([("user", "Hi"), ("assistant", "Hello")], addGenerationPrompt: false, "<s>", "<|endoftext|>"));
    }

    [Fact]
    public void WhitespaceControlFiltersAndLoopVariables()
    {
        var t = new ChatTemplate("{%- for m in messages -%}\n  {{ loop.index }}:{{ m.role | upper }}={{ m.content | trim }}{% if not loop.last %},{% endif %}\n{%- endfor %}{{ messages | length }}");
        Assert.Equal("1:USER=a,2:ASSISTANT=b2", t.Render([("user", " a "), ("assistant", "b")], true, null, null));
    }

    [Theory]
    [InlineData("{% macro f() %}x{% endmacro %}", "macro")]
    [InlineData("{{ messages | map(attribute='content') }}", "map")]
    [InlineData("{% for k, v in messages %}{% endfor %}", "tuple")]
    [InlineData("{% set ns = namespace(x=1) %}", "keyword")]
    public void OutsideTheSubsetIsRefusedByName(string source, string named)
    {
        var e = Assert.Throws<UnsupportedTemplateException>(() => new ChatTemplate(source).Render([("user", "x")], true, null, null));
        Assert.Contains(named, e.Message);
    }

    static string Render(string source) => new ChatTemplate(source).Render([("user", "Hi"), ("assistant", "Hello")], true, "<s>", "</s>");

    [Theory]
    [InlineData(100_000, "(", ")")]
    [InlineData(100_000, "not ", "")]
    [InlineData(100_000, "- ", "")]
    [InlineData(100_000, "[", "]")]
    public void Nesting_past_the_limit_is_refused_not_a_stack_overflow(int depth, string open, string close)
    {
        string source = "{{ " + string.Concat(Enumerable.Repeat(open, depth)) + "1" + string.Concat(Enumerable.Repeat(close, depth)) + " }}";
        var e = Assert.Throws<UnsupportedTemplateException>(() => new ChatTemplate(source));
        Assert.Contains($"nested more than {ChatTemplate.MaxNesting} deep", e.Message);
        _ = new ChatTemplate("{{ " + string.Concat(Enumerable.Repeat(open, 20)) + "1" + string.Concat(Enumerable.Repeat(close, 20)) + " }}"); // 20 deep parses
    }

    [Fact]
    public void Chains_and_blocks_past_the_limits_are_refused()
    {
        // A chain is parsed by a loop but evaluated by recursion: its length is its depth.
        var chain = Assert.Throws<UnsupportedTemplateException>(() => new ChatTemplate("{{ 1" + string.Concat(Enumerable.Repeat(" + 1", 100_000)) + " }}"));
        Assert.Contains($"more than {ChatTemplate.MaxExpressionDepth} operations deep", chain.Message);
        Assert.Throws<UnsupportedTemplateException>(() => new ChatTemplate("{{ messages" + string.Concat(Enumerable.Repeat(".content", 100_000)) + " }}"));
        Assert.Throws<UnsupportedTemplateException>(() => new ChatTemplate("{{ 'a'" + string.Concat(Enumerable.Repeat(" | trim", 100_000)) + " }}"));
        Assert.Equal("200", Render("{{ 1" + string.Concat(Enumerable.Repeat(" + 1", 199)) + " }}"));
        var blocks = Assert.Throws<UnsupportedTemplateException>(() => new ChatTemplate(string.Concat(Enumerable.Repeat("{% if true %}", 50_000)) + string.Concat(Enumerable.Repeat("{% endif %}", 50_000))));
        Assert.Contains("blocks nested more than", blocks.Message);
    }

    [Fact]
    public void Work_and_output_past_the_limits_are_refused()
    {
        var repeat = Assert.Throws<TemplateRaisedException>(() => Render("{{ 'ab' * 2147483647 }}"));
        Assert.Contains("'ab' * 2147483647 would make more than", repeat.Message);
        Assert.Throws<TemplateRaisedException>(() => Render("{% set s = 'ab' %}" + string.Concat(Enumerable.Repeat("{% set s = s ~ s %}", 40)) + "{{ s | length }}"));
        Assert.Throws<TemplateRaisedException>(() => Render("{% set l = [1] %}" + string.Concat(Enumerable.Repeat("{% set l = l + l %}", 40)) + "{{ l | length }}"));
        var steps = Assert.Throws<TemplateRaisedException>(() => Render("{% for a in 'x' * 100000 %}{% for b in 'y' * 1000 %}{% endfor %}{% endfor %}"));
        Assert.Contains("steps", steps.Message);
        var output = Assert.Throws<TemplateRaisedException>(() => Render("{% for a in 'x' * 10000 %}{{ 'z' * 10000 }}{% endfor %}"));
        Assert.Contains("characters", output.Message);
    }

    [Fact]
    public void Arithmetic_edges_are_values_or_refusals()
    {
        // A negated integer stays an integer: templates index messages[-1] (it used to become -1.0 and find nothing).
        Assert.Equal("assistant 3 -2 -2.5", Render("{{ messages[-1].role }} {{ [1, 2, 3][-1] }} {{ -2 }} {{ -2.5 }}"));
        Assert.Equal("0", Render("{{ (0 - 9223372036854775807 - 1) % -1 }}"));
        Assert.Contains("out of range", Assert.Throws<UnsupportedTemplateException>(() => new ChatTemplate("{{ 99999999999999999999 }}")).Message);
        Assert.Contains("not a number", Assert.Throws<UnsupportedTemplateException>(() => new ChatTemplate("{{ 1.2.3 }}")).Message);
        Assert.Throws<TemplateRaisedException>(() => Render("{{ 1 % 0 }}"));
    }

    [Theory]
    [InlineData("{\"chat_template\": ", "expected valid JSON")]
    [InlineData("{\"chat_template\": 5}", "'chat_template': expected a string or a list of named templates")]
    [InlineData("{\"chat_template\": [{\"name\": \"default\", \"template\": 5}]}", "'template': expected a string")]
    [InlineData("{\"chat_template\": [7, {\"name\": 3}]}", "none called \"default\"")]
    [InlineData("{\"chat_template\": \"x\", \"eos_token\": [1]}", "'eos_token': expected a string")]
    [InlineData("[1, 2]", "expected an object")]
    public void A_broken_tokenizer_config_is_named_in_the_error(string json, string expected)
    {
        string folder = Directory.CreateTempSubdirectory("loupe-chat-template").FullName;
        try
        {
            File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), json);
            var e = Record.Exception(() => ChatTemplate.FromModelFolder(folder));
            Assert.True(e is InputError or UnsupportedTemplateException, $"{e?.GetType().Name}: {e?.Message}");
            Assert.Contains(expected, e!.Message);
            if (e is InputError) Assert.Contains("tokenizer_config.json", e.Message);
        }
        finally { Directory.Delete(folder, recursive: true); }
    }
}
