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
}
