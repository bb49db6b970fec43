using System.Text;
using System.Text.Json.Nodes;
using Loupe.Fuzz.Engine;
using Loupe.Fuzz.Mutators;
using Loupe.Serve.OpenAi;

namespace Loupe.Fuzz.Targets;

/// <summary>
/// <c>ChatTemplate.FromModelFolder</c> (tokenizer_config.json's chat_template, bos_token, eos_token) and a rendering of a
/// conversation, as <c>loupe serve</c>'s /v1/chat/completions does. A template outside the Jinja subset, or one that raises
/// or runs past the rendering limits, is a refusal; anything else escaping (a stack overflow, a parse exception, an
/// out-of-memory string) would take the server down or answer 500.
/// </summary>
public sealed class ChatTemplateTarget : FuzzTarget
{
    public override string Name => "chat-template";
    public override int DefaultIterations => 2500;

    /// <summary>Templates as models ship them (ChatML: Qwen, SmolLM; Llama 2, Llama 3, Gemma, Zephyr), all inside the subset.</summary>
    static readonly (string Id, string Template)[] s_templates =
    [
        ("chatml", "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
        ("llama2", "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"),
        ("llama3", "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
        ("gemma", "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"),
        ("zephyr", "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"),
        ("filters-and-slices", "{%- for m in messages[-2:] -%}{{ loop.index }}/{{ loop.length }}:{{ m.role | upper }}={{ m.content | trim | length }}{{ m.content[:3] ~ (m.content * 2)[-1] }}{% if m.content is string and 'x' not in m.role %};{% endif %}{%- endfor %}{{ messages | tojson }}{{ [1, 2.5, none, true] | length }}"),
    ];

    /// <summary>Jinja fragments spliced into the template: syntax outside the subset, deep nesting, and work that grows without bound.</summary>
    static readonly Func<Random, string>[] s_fragments =
    [
        _ => "{{", _ => "}}", _ => "{%", _ => "%}", _ => "{#", _ => "{%- endfor -%}", _ => "{% endif %}", _ => "{% else %}", _ => "{% elif x %}",
        _ => "{% for x in messages %}", _ => "{% for x in messages[0].content * 100000 %}{% for y in messages %}{{ y.content }}{% endfor %}{% endfor %}",
        _ => "{{ 'ab' * 2147483647 }}", _ => "{{ 'a' * 99999999999999999999 }}", _ => "{{ 1.2.3 }}", _ => "{{ 9223372036854775807 + 1 }}",
        _ => "{{ -9223372036854775807 - 1 % -1 }}", _ => "{{ (0 - 9223372036854775807 - 1) % -1 }}", _ => "{{ 1 % 0 }}", _ => "{{ 1.5 % 0 }}", _ => "{{ messages[2147483648] }}",
        _ => "{{ messages[-9223372036854775807] }}", _ => "{{ messages[1:-9999999999] }}", _ => "{{ 'abc'[9223372036854775807:] }}", _ => "{{ undefined_name.x }}",
        _ => "{{ messages.x.y }}", _ => "{{ loop.nope }}", _ => "{{ raise_exception }}", _ => "{{ raise_exception | tojson }}", _ => "{{ messages }}",
        _ => "{{ messages[0] | tojson }}", _ => "{{ loop | tojson }}", _ => "{{ x.strip(1, 2, 3) }}", _ => "{{ 'a'.nope() }}", _ => "{{ 3 < 'a' }}",
        _ => "{% set l = [1] %}" + string.Concat(Enumerable.Repeat("{% set l = l + l %}", 40)) + "{{ l | length }}",
        _ => "{% set s = 'ab' %}" + string.Concat(Enumerable.Repeat("{% set s = s ~ s %}", 40)) + "{{ s | length }}",
        _ => "{{ " + new string('(', 100_000) + "1" + new string(')', 100_000) + " }}",
        _ => "{{ " + string.Concat(Enumerable.Repeat("not ", 100_000)) + "true }}",
        _ => "{{ " + string.Concat(Enumerable.Repeat("- ", 100_000)) + "1 }}",
        _ => "{{ 1" + string.Concat(Enumerable.Repeat(" + 1", 100_000)) + " }}",
        _ => "{{ messages" + string.Concat(Enumerable.Repeat(".content", 100_000)) + " }}",
        _ => "{{ 'a'" + string.Concat(Enumerable.Repeat(" | trim", 100_000)) + " }}",
        _ => "{{ " + string.Concat(Enumerable.Repeat("[", 100_000)) + string.Concat(Enumerable.Repeat("]", 100_000)) + " }}",
        _ => string.Concat(Enumerable.Repeat("{% if true %}", 50_000)) + string.Concat(Enumerable.Repeat("{% endif %}", 50_000)),
        _ => string.Concat(Enumerable.Repeat("{% for m in messages %}", 30)) + "x" + string.Concat(Enumerable.Repeat("{% endfor %}", 30)),
        _ => "{{ 1 if true else 2 if false else 3 }}", _ => "{% set = 1 %}", _ => "{% set x == 1 %}", _ => "{% for in %}", _ => "{% %}", _ => "{{ }}",
        _ => "{{ \"\\", _ => "{{ '\\u0000' }}", _ => "\ud800", _ => "{{ 'ü☃𝄞' | upper }}",
        rng => "{{ " + new string('9', rng.Next(1, 400)) + " }}",
    ];

    public override IReadOnlyList<Seed> BuildSeeds(SeedContext context)
    {
        var seeds = new List<Seed>();
        foreach (var (id, template) in s_templates)
        {
            var config = new JsonObject { ["bos_token"] = "<s>", ["eos_token"] = new JsonObject { ["content"] = "</s>", ["special"] = true }, ["chat_template"] = template };
            seeds.Add(Config($"generated:chat-template-{id}", config));
        }
        // transformers' list form, with a second named template.
        seeds.Add(Config("generated:chat-template-named", new JsonObject
        {
            ["eos_token"] = "<|im_end|>",
            ["chat_template"] = new JsonArray(new JsonObject { ["name"] = "default", ["template"] = s_templates[0].Template }, new JsonObject { ["name"] = "tool_use", ["template"] = "{{ tools }}" }),
        }));
        return seeds;
    }

    static Seed Config(string id, JsonObject config) =>
        new(id, [new SeedFile("tokenizer_config.json", Encoding.UTF8.GetBytes(config.ToJsonString()), FileKind.Json)]);

    public override IReadOnlyList<NamedMutator> ExtraMutators(SeedFile file) => [new("jinja-fragment", Splice), new("jinja-fragment", Splice), new("jinja-cut", Cut)];

    /// <summary>A fragment inserted into the template (or replacing a stretch of it).</summary>
    static (byte[], string)? Splice(byte[] bytes, Random rng) => EditTemplate(bytes, rng, (template, r) =>
    {
        string fragment = s_fragments[r.Next(s_fragments.Length)](r);
        int at = r.Next(template.Length + 1);
        int remove = r.Next(3) == 0 ? r.Next(Math.Min(40, template.Length - at) + 1) : 0;
        return (template[..at] + fragment + template[(at + remove)..], $"jinja '{JsonMutators.Describe(fragment)}' at {at}");
    });

    /// <summary>A stretch of the template deleted or duplicated (unbalanced blocks, halves of tags).</summary>
    static (byte[], string)? Cut(byte[] bytes, Random rng) => EditTemplate(bytes, rng, (template, r) =>
    {
        if (template.Length == 0) return (template, "empty");
        int at = r.Next(template.Length), length = r.Next(1, Math.Min(80, template.Length - at) + 1);
        return r.Next(2) == 0
            ? (template.Remove(at, length), $"jinja cut {length} at {at}")
            : (template.Insert(at, template.Substring(at, length)), $"jinja doubled {length} at {at}");
    });

    static (byte[], string)? EditTemplate(byte[] bytes, Random rng, Func<string, Random, (string, string)> edit)
    {
        if (JsonMutators.Parse(bytes) is not JsonObject config) return null;
        var slot = config["chat_template"] switch
        {
            JsonValue v when v.TryGetValue(out string? _) => (Parent: (JsonNode)config, Key: "chat_template"),
            JsonArray list when list.OfType<JsonObject>().FirstOrDefault(o => o["template"] is JsonValue) is { } named => (Parent: named, Key: "template"),
            _ => default,
        };
        if (slot.Parent is null || !slot.Parent[slot.Key]!.AsValue().TryGetValue(out string? template)) return null;
        var (changed, description) = edit(template, rng);
        slot.Parent[slot.Key] = changed;
        return (Encoding.UTF8.GetBytes(config.ToJsonString()), description);
    }

    public override void Execute(string folder, FuzzInput input)
    {
        (ChatTemplate Template, string? Bos, string? Eos)? loaded;
        try { loaded = ChatTemplate.FromModelFolder(folder); }
        catch (UnsupportedTemplateException e) { throw new InputError($"unsupported template: {e.Message}"); }
        if (loaded is not { } t) return;
        IReadOnlyList<(string, string)> conversation = [("user", "Hello {{ there }} %}"), ("assistant", "  Hi ü☃𝄞 "), ("user", "xyz")];
        try
        {
            var text = t.Template.Render(conversation, addGenerationPrompt: true, t.Bos, t.Eos);
            Require.That(text.Length <= ChatTemplate.MaxChars, $"a rendering of {text.Length} characters, past the limit of {ChatTemplate.MaxChars}");
        }
        catch (UnsupportedTemplateException e) { throw new InputError($"unsupported template: {e.Message}"); }
        catch (TemplateRaisedException e) { throw new InputError($"template error: {e.Message}"); }
    }
}
