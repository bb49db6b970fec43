using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Loupe.Serve.OpenAi;

/// <summary>A chat template uses Jinja outside the subset <see cref="ChatTemplate"/> implements.</summary>
public sealed class UnsupportedTemplateException(string message) : Exception(message);

/// <summary>
/// Rendering failed: the template raised an error itself (<c>raise_exception(...)</c>, e.g. roles that do not alternate),
/// divided by zero, or went past <see cref="ChatTemplate.MaxChars"/> characters or <see cref="ChatTemplate.MaxSteps"/> steps.
/// </summary>
public sealed class TemplateRaisedException(string message) : Exception(message);

/// <summary>
/// The Jinja subset Hugging Face chat templates use: text, <c>{{ … }}</c>, <c>{% for %}</c> (with <c>loop.index0</c>,
/// <c>loop.first</c>, <c>loop.last</c>), <c>{% if %}/{% elif %}/{% else %}</c>, <c>{% set %}</c>, comments and
/// whitespace control (<c>{%-</c>, <c>-%}</c>); expressions with literals, names, <c>a.b</c>, <c>a['b']</c>, <c>a[i]</c>,
/// slices, <c>+ - * % ~</c>, comparisons, <c>and/or/not</c>, <c>in</c>, <c>is (not) defined/none</c>, string methods
/// (strip, lstrip, rstrip, upper, lower, startswith, endswith, title), filters (trim, length, upper, lower, string,
/// tojson) and <c>raise_exception</c>. Anything else is refused at parse time with <see cref="UnsupportedTemplateException"/>
/// naming it, so a request never gets a silently wrong prompt.
/// </summary>
public sealed class ChatTemplate
{
    /// <summary>Nesting of blocks and of brackets beyond which a template is refused (real templates nest a few levels; this keeps the recursion off the stack's end).</summary>
    public const int MaxNesting = 100;

    /// <summary>The deepest expression tree accepted (a chain <c>a + b + … </c> of n terms is n deep); evaluation recurses that deep.</summary>
    public const int MaxExpressionDepth = 500;

    /// <summary>The most characters a rendered prompt (or any string made while rendering it) may have.</summary>
    public const int MaxChars = 1 << 24;

    /// <summary>The most expressions and statements one rendering may evaluate (loops over long texts could otherwise run for hours).</summary>
    public const long MaxSteps = 10_000_000;

    readonly List<Node> _nodes;

    /// <exception cref="UnsupportedTemplateException">The template uses syntax outside the subset (the message names it).</exception>
    public ChatTemplate(string source)
    {
        Source = source;
        var parser = new Parser(Lex(source));
        _nodes = parser.ParseBlock([]);
    }

    public string Source { get; }

    /// <summary>Renders the conversation: <paramref name="messages"/> as role/content pairs plus the special-token strings.</summary>
    /// <exception cref="TemplateRaisedException">The template called <c>raise_exception</c>.</exception>
    /// <exception cref="UnsupportedTemplateException">A construct only detectable while rendering (e.g. an unknown method).</exception>
    public string Render(IReadOnlyList<(string Role, string Content)> messages, bool addGenerationPrompt, string? bosToken, string? eosToken)
    {
        var scope = new Dictionary<string, object?>
        {
            ["messages"] = messages.Select(m => (object?)new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList(),
            ["add_generation_prompt"] = addGenerationPrompt,
            ["bos_token"] = bosToken ?? "",
            ["eos_token"] = eosToken ?? "",
        };
        var output = new StringBuilder();
        new Renderer(output).Execute(_nodes, [scope]);
        return output.ToString();
    }

    /// <summary>The <c>chat_template</c> of a model folder's tokenizer_config.json, with its bos/eos token strings; null when there is none.</summary>
    /// <exception cref="UnsupportedTemplateException">The template is outside the subset (or a list of named templates without "default").</exception>
    /// <exception cref="InputError">tokenizer_config.json is not JSON, or its chat_template, bos_token or eos_token has the wrong type.</exception>
    public static (ChatTemplate Template, string? Bos, string? Eos)? FromModelFolder(string? folder)
    {
        if (folder is null || !Directory.Exists(folder)) return null;
        string path = Path.Combine(folder, "tokenizer_config.json");
        if (!File.Exists(path)) return null;
        using var doc = JsonInput.Parse(InputFiles.ReadAllBytes(path, 64L << 20), path); // real ones are kilobytes to a few megabytes
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw InputError.Expected(path, "the file", "an object", JsonInput.KindName(root));
        if (!root.TryGetProperty("chat_template", out var t)) return null;
        string? source = t.ValueKind switch
        {
            JsonValueKind.String => t.GetString(),
            JsonValueKind.Null => null,
            // transformers' list form: [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
            JsonValueKind.Array => t.EnumerateArray().FirstOrDefault(e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String && n.GetString() == "default") is { ValueKind: JsonValueKind.Object } named
                ? named.TryGetProperty("template", out var body) && body.ValueKind == JsonValueKind.String ? body.GetString()
                    : throw InputError.Expected(path, "the \"default\" chat_template's 'template'", "a string", named.TryGetProperty("template", out var b) ? JsonInput.KindName(b) : "nothing")
                : throw new UnsupportedTemplateException("tokenizer_config.json lists named chat templates but none called \"default\""),
            _ => throw InputError.Expected(path, "'chat_template'", "a string or a list of named templates", JsonInput.KindName(t)),
        };
        if (source is null) return null;
        return (new ChatTemplate(source), TokenString(root, "bos_token", path), TokenString(root, "eos_token", path));
    }

    static string? TokenString(JsonElement root, string name, string path)
    {
        if (!root.TryGetProperty(name, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Null => null,
            JsonValueKind.Object when v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
            _ => throw InputError.Expected(path, $"'{name}'", "a string or an added token with a string 'content'", JsonInput.KindName(v)),
        };
    }

    // ---- lexing: text, {{ expr }}, {% stmt %}, {# comment #} ----

    enum PieceKind { Text, Output, Statement }
    sealed record Piece(PieceKind Kind, string Text);

    static List<Piece> Lex(string source)
    {
        var pieces = new List<Piece>();
        int i = 0;
        bool trimNextLeading = false;
        while (i < source.Length)
        {
            int open = source.IndexOf('{', i);
            while (open >= 0 && open + 1 < source.Length && source[open + 1] is not ('{' or '%' or '#')) open = source.IndexOf('{', open + 1);
            if (open < 0 || open + 1 >= source.Length) { AddText(source[i..]); break; }
            string text = source[i..open];
            char kind = source[open + 1];
            bool trimBefore = open + 2 < source.Length && source[open + 2] == '-';
            if (trimBefore) text = text.TrimEnd();
            AddText(text);
            string close = kind switch { '{' => "}}", '%' => "%}", _ => "#}" };
            int end = source.IndexOf(close, open + 2, StringComparison.Ordinal);
            if (end < 0) throw new UnsupportedTemplateException($"unclosed '{{{kind}' at character {open}");
            int innerStart = open + 2 + (trimBefore ? 1 : 0);
            bool trimAfter = end > innerStart && source[end - 1] == '-';
            string inner = source[innerStart..(trimAfter ? end - 1 : end)];
            if (kind == '{') pieces.Add(new Piece(PieceKind.Output, inner));
            else if (kind == '%') pieces.Add(new Piece(PieceKind.Statement, inner.Trim()));
            trimNextLeading = trimAfter;
            i = end + 2;
        }
        return pieces;

        void AddText(string text)
        {
            if (trimNextLeading) { text = text.TrimStart(); trimNextLeading = false; }
            if (text.Length > 0) pieces.Add(new Piece(PieceKind.Text, text));
        }
    }

    // ---- syntax tree ----

    abstract record Node;
    sealed record TextNode(string Text) : Node;
    sealed record OutputNode(Expr Value) : Node;
    sealed record ForNode(string Variable, Expr Items, List<Node> Body) : Node;
    sealed record IfNode(List<(Expr Condition, List<Node> Body)> Branches, List<Node>? Else) : Node;
    sealed record SetNode(string Name, Expr Value) : Node;

    abstract record Expr;
    sealed record Literal(object? Value) : Expr;
    sealed record Name(string Id) : Expr;
    sealed record Attribute(Expr Target, string Key) : Expr;
    sealed record Index(Expr Target, Expr Key) : Expr;
    sealed record Slice(Expr Target, Expr? Start, Expr? Stop) : Expr;
    sealed record Binary(string Op, Expr Left, Expr Right) : Expr;
    sealed record Unary(string Op, Expr Operand) : Expr;
    sealed record Call(Expr Target, List<Expr> Args) : Expr;
    sealed record Filter(Expr Target, string Id) : Expr;
    sealed record Test(Expr Target, string Id, bool Negated) : Expr;
    sealed record ListExpr(List<Expr> Items) : Expr;
    sealed record Conditional(Expr Condition, Expr Then, Expr? Else) : Expr;

    sealed class Parser(List<Piece> pieces)
    {
        int _at, _depth;

        public List<Node> ParseBlock(string[] terminators)
        {
            if (++_depth > MaxNesting) throw new UnsupportedTemplateException($"blocks nested more than {MaxNesting} deep");
            try { return ParseBlockBody(terminators); }
            finally { _depth--; }
        }

        List<Node> ParseBlockBody(string[] terminators)
        {
            var nodes = new List<Node>();
            while (_at < pieces.Count)
            {
                var piece = pieces[_at];
                if (piece.Kind == PieceKind.Text) { nodes.Add(new TextNode(piece.Text)); _at++; continue; }
                if (piece.Kind == PieceKind.Output) { nodes.Add(new OutputNode(ExprParser.Parse(piece.Text))); _at++; continue; }
                string keyword = piece.Text.Split((char[])[' ', '\t', '\n', '\r'], 2)[0];
                if (terminators.Contains(keyword)) return nodes;
                _at++;
                string rest = piece.Text[keyword.Length..].Trim();
                switch (keyword)
                {
                    case "for":
                    {
                        int inAt = rest.IndexOf(" in ", StringComparison.Ordinal);
                        if (inAt < 0) throw new UnsupportedTemplateException($"'{{% for {rest} %}}' is not 'for NAME in EXPR'");
                        string variable = rest[..inAt].Trim();
                        if (!IsIdentifier(variable)) throw new UnsupportedTemplateException($"for-loops over '{variable}' (tuple unpacking) are not supported");
                        var items = ExprParser.Parse(rest[(inAt + 4)..]);
                        var body = ParseBlock(["endfor", "else"]);
                        Expect("endfor");
                        nodes.Add(new ForNode(variable, items, body));
                        break;
                    }
                    case "if":
                    {
                        var branches = new List<(Expr, List<Node>)> { (ExprParser.Parse(rest), ParseBlock(["elif", "else", "endif"])) };
                        List<Node>? otherwise = null;
                        while (true)
                        {
                            var next = Current("endif");
                            _at++;
                            if (next.StartsWith("elif", StringComparison.Ordinal)) branches.Add((ExprParser.Parse(next[4..]), ParseBlock(["elif", "else", "endif"])));
                            else if (next == "else") otherwise = ParseBlock(["endif"]);
                            else break;
                        }
                        nodes.Add(new IfNode(branches, otherwise));
                        break;
                    }
                    case "set":
                    {
                        int eq = rest.IndexOf('=');
                        if (eq < 0) throw new UnsupportedTemplateException($"block assignments ('{{% set {rest} %}}' without '=') are not supported");
                        string name = rest[..eq].Trim();
                        if (!IsIdentifier(name)) throw new UnsupportedTemplateException($"'{{% set {name} = … %}}': only plain names can be assigned (not namespaces or attributes)");
                        nodes.Add(new SetNode(name, ExprParser.Parse(rest[(eq + 1)..])));
                        break;
                    }
                    default:
                        throw new UnsupportedTemplateException($"the '{{% {keyword} %}}' statement is not supported (supported: for, if/elif/else, set)");
                }
            }
            if (terminators.Length > 0) throw new UnsupportedTemplateException($"the template ends before '{{% {terminators[^1]} %}}'");
            return nodes;
        }

        string Current(string expected) =>
            _at < pieces.Count && pieces[_at].Kind == PieceKind.Statement ? pieces[_at].Text
                : throw new UnsupportedTemplateException($"expected '{{% {expected} %}}'");

        void Expect(string keyword)
        {
            string text = Current(keyword);
            if (text != keyword) throw new UnsupportedTemplateException(text == "else" ? "for-loops with '{% else %}' are not supported" : $"expected '{{% {keyword} %}}', found '{{% {text} %}}'");
            _at++;
        }
    }

    static bool IsIdentifier(string s) => s.Length > 0 && (char.IsLetter(s[0]) || s[0] == '_') && s.All(c => char.IsLetterOrDigit(c) || c == '_');

    /// <summary>Recursive descent over expression tokens, precedence as Jinja: if-else, or, and, not, comparison, ~/+/-, *//%, unary, postfix.</summary>
    sealed class ExprParser
    {
        readonly List<string> _tokens;
        int _at, _depth;

        ExprParser(List<string> tokens) => _tokens = tokens;

        public static Expr Parse(string text)
        {
            var p = new ExprParser(Tokenize(text));
            var e = p.Ternary();
            if (p._at < p._tokens.Count) throw new UnsupportedTemplateException($"unexpected '{p._tokens[p._at]}' in '{text.Trim()}'");
            if (Depth(e) > MaxExpressionDepth)
                throw new UnsupportedTemplateException($"an expression more than {MaxExpressionDepth} operations deep (e.g. a chain of that many '+'), in '{(text.Length > 60 ? text.Trim()[..Math.Min(60, text.Trim().Length)] + "…" : text.Trim())}'");
            return e;
        }

        /// <summary>The tree's depth, walked with a stack of its own (chains are built by loops, so the tree can be deeper than the parser's recursion).</summary>
        static int Depth(Expr root)
        {
            int deepest = 0;
            var pending = new Stack<(Expr Node, int Depth)>([(root, 1)]);
            while (pending.TryPop(out var item))
            {
                deepest = Math.Max(deepest, item.Depth);
                if (deepest > MaxExpressionDepth) break;
                foreach (var child in Children(item.Node))
                    if (child is not null) pending.Push((child, item.Depth + 1));
            }
            return deepest;
        }

        static Expr?[] Children(Expr e) => e switch
        {
            Attribute a => [a.Target],
            Index i => [i.Target, i.Key],
            Slice s => [s.Target, s.Start, s.Stop],
            Binary b => [b.Left, b.Right],
            Unary u => [u.Operand],
            Call c => [c.Target, .. c.Args],
            Filter f => [f.Target],
            Test t => [t.Target],
            ListExpr l => [.. l.Items],
            Conditional c => [c.Condition, c.Then, c.Else],
            _ => [],
        };

        static List<string> Tokenize(string text)
        {
            var tokens = new List<string>();
            int i = 0;
            while (i < text.Length)
            {
                char c = text[i];
                if (char.IsWhiteSpace(c)) { i++; continue; }
                if (c is '\'' or '"')
                {
                    var sb = new StringBuilder("\"");
                    int j = i + 1;
                    for (; j < text.Length && text[j] != c; j++)
                    {
                        if (text[j] == '\\' && j + 1 < text.Length)
                        {
                            j++;
                            sb.Append(text[j] switch { 'n' => '\n', 't' => '\t', 'r' => '\r', _ => text[j] });
                        }
                        else sb.Append(text[j]);
                    }
                    if (j >= text.Length) throw new UnsupportedTemplateException($"unterminated string in '{text.Trim()}'");
                    tokens.Add(sb.ToString());
                    i = j + 1;
                    continue;
                }
                if (char.IsDigit(c))
                {
                    int j = i;
                    while (j < text.Length && (char.IsDigit(text[j]) || text[j] == '.')) j++;
                    tokens.Add(text[i..j]);
                    i = j;
                    continue;
                }
                if (char.IsLetter(c) || c == '_')
                {
                    int j = i;
                    while (j < text.Length && (char.IsLetterOrDigit(text[j]) || text[j] == '_')) j++;
                    tokens.Add(text[i..j]);
                    i = j;
                    continue;
                }
                string two = i + 1 < text.Length ? text.Substring(i, 2) : "";
                if (two is "==" or "!=" or "<=" or ">=" or "//" or "**") { tokens.Add(two); i += 2; continue; }
                if ("+-*/%~<>()[].,:|".Contains(c)) { tokens.Add(c.ToString()); i++; continue; }
                if (c == '=') throw new UnsupportedTemplateException($"keyword arguments (and '=' inside expressions) are not supported, in '{text.Trim()}'");
                throw new UnsupportedTemplateException($"the character '{c}' in '{text.Trim()}' is not supported (dict literals and other syntax are outside the subset)");
            }
            return tokens;
        }

        string? Peek => _at < _tokens.Count ? _tokens[_at] : null;
        bool Accept(string token) { if (Peek == token) { _at++; return true; } return false; }
        void Expect(string token) { if (!Accept(token)) throw new UnsupportedTemplateException($"expected '{token}' but found '{Peek ?? "the end"}'"); }
        string Identifier()
        {
            string t = Peek ?? throw new UnsupportedTemplateException("an expression ends too early");
            if (!IsIdentifier(t)) throw new UnsupportedTemplateException($"expected a name, found '{t}'");
            _at++;
            return t;
        }

        /// <summary>Every recursion of the grammar passes here, so nesting is bounded before it can exhaust the stack.</summary>
        T Nested<T>(Func<T> parse)
        {
            if (++_depth > MaxNesting) throw new UnsupportedTemplateException($"an expression nested more than {MaxNesting} deep");
            try { return parse(); }
            finally { _depth--; }
        }

        Expr Ternary() => Nested(() =>
        {
            var e = Or();
            if (!Accept("if")) return e;
            var condition = Or();
            return new Conditional(condition, e, Accept("else") ? Ternary() : null);
        });

        Expr Or() { var e = And(); while (Accept("or")) e = new Binary("or", e, And()); return e; }
        Expr And() { var e = Not(); while (Accept("and")) e = new Binary("and", e, Not()); return e; }
        Expr Not() => Accept("not") ? new Unary("not", Nested(Not)) : Comparison();

        Expr Comparison()
        {
            var e = Concat();
            while (true)
            {
                if (Peek is "==" or "!=" or "<" or ">" or "<=" or ">=") { string op = _tokens[_at++]; e = new Binary(op, e, Concat()); }
                else if (Peek == "in") { _at++; e = new Binary("in", e, Concat()); }
                else if (Peek == "not" && _at + 1 < _tokens.Count && _tokens[_at + 1] == "in") { _at += 2; e = new Unary("not", new Binary("in", e, Concat())); }
                else if (Accept("is"))
                {
                    bool negated = Accept("not");
                    string test = Identifier();
                    if (test is not ("defined" or "undefined" or "none" or "string" or "number"))
                        throw new UnsupportedTemplateException($"the test 'is {test}' is not supported (supported: defined, undefined, none, string, number)");
                    e = new Test(e, test, negated);
                }
                else return e;
            }
        }

        Expr Concat()
        {
            var e = Term();
            while (Peek is "+" or "-" or "~") { string op = _tokens[_at++]; e = new Binary(op, e, Term()); }
            return e;
        }

        Expr Term()
        {
            var e = Unary_();
            while (Peek is "*" or "%" or "/" or "//")
            {
                string op = _tokens[_at++];
                if (op is "/" or "//") throw new UnsupportedTemplateException($"the operator '{op}' is not supported");
                e = new Binary(op, e, Unary_());
            }
            return e;
        }

        Expr Unary_() => Accept("-") ? new Unary("-", Nested(Unary_)) : Postfix(Primary());

        Expr Postfix(Expr e)
        {
            while (true)
            {
                if (Accept(".")) e = new Attribute(e, Identifier());
                else if (Accept("["))
                {
                    Expr? start = Peek == ":" ? null : Ternary();
                    if (Accept(":"))
                    {
                        Expr? stop = Peek == "]" ? null : Ternary();
                        if (Peek == ":") throw new UnsupportedTemplateException("slices with a step are not supported");
                        Expect("]");
                        e = new Slice(e, start, stop);
                    }
                    else { Expect("]"); e = new Index(e, start!); }
                }
                else if (Accept("("))
                {
                    var args = new List<Expr>();
                    if (!Accept(")"))
                    {
                        do
                        {
                            if (_at + 1 < _tokens.Count && _tokens[_at + 1] == "=" ) throw new UnsupportedTemplateException("keyword arguments are not supported");
                            args.Add(Ternary());
                        } while (Accept(","));
                        Expect(")");
                    }
                    e = new Call(e, args);
                }
                else if (Accept("|"))
                {
                    string name = Identifier();
                    if (name is not ("trim" or "length" or "count" or "upper" or "lower" or "string" or "tojson"))
                        throw new UnsupportedTemplateException($"the filter '|{name}' is not supported (supported: trim, length, upper, lower, string, tojson)");
                    if (Peek == "(") throw new UnsupportedTemplateException($"filter arguments ('|{name}(…)') are not supported");
                    e = new Filter(e, name);
                }
                else return e;
            }
        }

        Expr Primary()
        {
            string t = Peek ?? throw new UnsupportedTemplateException("an expression ends too early");
            _at++;
            if (t.StartsWith('"')) return new Literal(t[1..]);
            if (char.IsDigit(t[0]))
                return t.Contains('.')
                    ? double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) ? new Literal(d) : throw new UnsupportedTemplateException($"'{t}' is not a number")
                    : long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out long l) ? new Literal(l) : throw new UnsupportedTemplateException($"the integer {t} is out of range");
            if (t == "(") { var e = Ternary(); Expect(")"); return e; }
            if (t == "[")
            {
                var items = new List<Expr>();
                if (!Accept("]")) { do items.Add(Ternary()); while (Accept(",")); Expect("]"); }
                return new ListExpr(items);
            }
            return t switch
            {
                "true" or "True" => new Literal(true),
                "false" or "False" => new Literal(false),
                "none" or "None" => new Literal(null),
                _ when IsIdentifier(t) => new Name(t),
                _ => throw new UnsupportedTemplateException($"unexpected '{t}'"),
            };
        }
    }

    // ---- evaluation ----

    /// <summary>A name or key that does not exist: falsy, renders as "", fails 'is defined'.</summary>
    sealed class Undefined { public static readonly Undefined Value = new(); }

    /// <summary>Jinja's loop variable.</summary>
    sealed record LoopInfo(int Index0, int Length);

    /// <summary>One rendering: the output, and the steps taken against <see cref="MaxSteps"/>.</summary>
    sealed class Renderer(StringBuilder output)
    {
        long _steps;

        void Step()
        {
            if (++_steps > MaxSteps)
                throw new TemplateRaisedException($"the chat template took more than {MaxSteps:N0} steps to render this conversation");
        }

        void Append(string text)
        {
            if (output.Length + (long)text.Length > MaxChars)
                throw new TemplateRaisedException($"the chat template wrote more than {MaxChars:N0} characters for this conversation");
            output.Append(text);
        }

        public void Execute(List<Node> nodes, List<Dictionary<string, object?>> scopes)
        {
            foreach (var node in nodes)
            {
                Step();
                switch (node)
                {
                    case TextNode t: Append(t.Text); break;
                    case OutputNode o: Append(Str(Eval(o.Value, scopes))); break;
                    case SetNode s: scopes[^1][s.Name] = Eval(s.Value, scopes); break;
                    case IfNode i:
                    {
                        var body = i.Branches.FirstOrDefault(b => Truthy(Eval(b.Condition, scopes))).Body ?? i.Else;
                        if (body is not null) Execute(body, scopes);
                        break;
                    }
                    case ForNode f:
                    {
                        var items = Eval(f.Items, scopes) switch
                        {
                            List<object?> list => list,
                            string s => s.Select(c => (object?)c.ToString()).ToList(),
                            Undefined => [],
                            var other => throw new UnsupportedTemplateException($"cannot loop over {Describe(other)}"),
                        };
                        for (int k = 0; k < items.Count; k++)
                        {
                            Step(); // an empty body still costs its iterations
                            // Assignments inside a loop body stay in that iteration, as in Jinja.
                            scopes.Add(new Dictionary<string, object?> { [f.Variable] = items[k], ["loop"] = new LoopInfo(k, items.Count) });
                            try { Execute(f.Body, scopes); }
                            finally { scopes.RemoveAt(scopes.Count - 1); }
                        }
                        break;
                    }
                }
            }
        }

        object? Eval(Expr expr, List<Dictionary<string, object?>> scopes)
        {
            Step();
            switch (expr)
            {
                case Literal l: return l.Value;
                case Name n:
                    for (int i = scopes.Count - 1; i >= 0; i--)
                        if (scopes[i].TryGetValue(n.Id, out var v)) return v;
                    return n.Id == "raise_exception" ? n : Undefined.Value;
                case ListExpr list: return list.Items.Select(e => Eval(e, scopes)).ToList();
                case Attribute a: return Member(Eval(a.Target, scopes), a.Key);
                case Index ix: return Member(Eval(ix.Target, scopes), Eval(ix.Key, scopes));
                case Slice s:
                {
                    var target = Eval(s.Target, scopes);
                    int length = target switch { List<object?> l => l.Count, string str => str.Length, _ => throw new UnsupportedTemplateException($"cannot slice {Describe(target)}") };
                    int Bound(Expr? e, int otherwise)
                    {
                        if (e is null) return otherwise;
                        int b = (int)ToLong(Eval(e, scopes));
                        return Math.Clamp(b < 0 ? length + b : b, 0, length);
                    }
                    int start = Bound(s.Start, 0), stop = Math.Max(start, Bound(s.Stop, length));
                    return target is string text ? text[start..stop] : ((List<object?>)target!).GetRange(start, stop - start);
                }
                case Conditional c: return Truthy(Eval(c.Condition, scopes)) ? Eval(c.Then, scopes) : c.Else is null ? "" : Eval(c.Else, scopes);
                case Unary u:
                {
                    var v = Eval(u.Operand, scopes);
                    return u.Op == "not" ? !Truthy(v) : v is double d ? -d : (object)-ToLong(v); // (object): else -1 would become a double and messages[-1] would find nothing
                }
                case Test t:
                {
                    var v = Eval(t.Target, scopes);
                    bool result = t.Id switch
                    {
                        "defined" => v is not Undefined,
                        "undefined" => v is Undefined,
                        "none" => v is null,
                        "string" => v is string,
                        _ => v is long or double,
                    };
                    return result != t.Negated;
                }
                case Filter f:
                {
                    var v = Eval(f.Target, scopes);
                    return f.Id switch
                    {
                        "trim" => Str(v).Trim(),
                        "upper" => Str(v).ToUpperInvariant(),
                        "lower" => Str(v).ToLowerInvariant(),
                        "string" => Str(v),
                        "tojson" => JsonSerializer.Serialize(v is Undefined ? null : v),
                        _ => (long)(v switch { string s => s.Length, List<object?> l => l.Count, Dictionary<string, object?> d => d.Count, _ => 0 }),
                    };
                }
                case Binary b:
                {
                    if (b.Op == "and") { var l = Eval(b.Left, scopes); return Truthy(l) ? Eval(b.Right, scopes) : l; }
                    if (b.Op == "or") { var l = Eval(b.Left, scopes); return Truthy(l) ? l : Eval(b.Right, scopes); }
                    var left = Eval(b.Left, scopes);
                    var right = Eval(b.Right, scopes);
                    return b.Op switch
                    {
                        "~" => Joined(Str(left), Str(right)),
                        "+" when left is string || right is string => left is string ls && right is string rs ? Joined(ls, rs)
                            : throw new UnsupportedTemplateException($"cannot add {Describe(left)} and {Describe(right)} (use ~ to join text with other values)"),
                        "+" when left is List<object?> ll && right is List<object?> rl => Concatenated(ll, rl),
                        "+" or "-" or "*" or "%" => Arithmetic(b.Op, left, right),
                        "==" => Equal(left, right),
                        "!=" => !Equal(left, right),
                        "in" => right switch
                        {
                            string s => s.Contains(Str(left), StringComparison.Ordinal),
                            List<object?> l => l.Any(x => Equal(x, left)),
                            Dictionary<string, object?> d => left is string k && d.ContainsKey(k),
                            _ => false,
                        },
                        _ => Compare(b.Op, left, right),
                    };
                }
                case Call c:
                {
                    var args = c.Args.Select(a => Eval(a, scopes)).ToList();
                    if (c.Target is Name { Id: "raise_exception" })
                        throw new TemplateRaisedException(args.Count > 0 ? Str(args[0]) : "the chat template raised an error");
                    if (c.Target is not Attribute method) throw new UnsupportedTemplateException($"calling {Describe(Eval(c.Target, scopes))} is not supported (only raise_exception and string methods)");
                    var target = Eval(method.Target, scopes);
                    if (target is not string text) throw new UnsupportedTemplateException($"the method '.{method.Key}()' on {Describe(target)} is not supported");
                    string Arg(int i) => i < args.Count ? Str(args[i]) : "";
                    return method.Key switch
                    {
                        "strip" => args.Count == 0 ? text.Trim() : text.Trim(Arg(0).ToCharArray()),
                        "lstrip" => args.Count == 0 ? text.TrimStart() : text.TrimStart(Arg(0).ToCharArray()),
                        "rstrip" => args.Count == 0 ? text.TrimEnd() : text.TrimEnd(Arg(0).ToCharArray()),
                        "upper" => text.ToUpperInvariant(),
                        "lower" => text.ToLowerInvariant(),
                        "title" => CultureInfo.InvariantCulture.TextInfo.ToTitleCase(text.ToLowerInvariant()),
                        "startswith" => text.StartsWith(Arg(0), StringComparison.Ordinal),
                        "endswith" => text.EndsWith(Arg(0), StringComparison.Ordinal),
                        _ => throw new UnsupportedTemplateException($"the string method '.{method.Key}()' is not supported (supported: strip, lstrip, rstrip, upper, lower, title, startswith, endswith)"),
                    };
                }
            }
            throw new UnsupportedTemplateException($"unsupported expression {expr.GetType().Name}");
        }
    }

    static object? Member(object? target, object? key) => target switch
    {
        Dictionary<string, object?> d when key is string k => d.TryGetValue(k, out var v) ? v : Undefined.Value,
        List<object?> l when key is long i => i >= -l.Count && i < l.Count ? l[(int)(i < 0 ? l.Count + i : i)] : Undefined.Value,
        string s when key is long i => i >= -s.Length && i < s.Length ? s[(int)(i < 0 ? s.Length + i : i)].ToString() : Undefined.Value,
        LoopInfo loop when key is string k => k switch
        {
            "index0" => (long)loop.Index0,
            "index" => (long)loop.Index0 + 1,
            "first" => loop.Index0 == 0,
            "last" => loop.Index0 == loop.Length - 1,
            "length" => (long)loop.Length,
            "revindex0" => (long)(loop.Length - 1 - loop.Index0),
            "revindex" => (long)(loop.Length - loop.Index0),
            _ => throw new UnsupportedTemplateException($"'loop.{k}' is not supported"),
        },
        Undefined => throw new UnsupportedTemplateException($"'{key}' of an undefined value"),
        _ => Undefined.Value,
    };

    static string Joined(string a, string b) =>
        a.Length + (long)b.Length > MaxChars ? throw new TemplateRaisedException($"the chat template made a string of more than {MaxChars:N0} characters") : a + b;

    static List<object?> Concatenated(List<object?> a, List<object?> b) =>
        a.Count + (long)b.Count > MaxChars ? throw new TemplateRaisedException($"the chat template made a list of more than {MaxChars:N0} items") : [.. a, .. b];

    static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        Dictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    static string Str(object? v) => v switch
    {
        null => "None",
        Undefined => "",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        string s => s,
        _ => throw new UnsupportedTemplateException($"cannot print {Describe(v)}"),
    };

    static bool Equal(object? a, object? b) => (a, b) switch
    {
        (long x, long y) => x == y,
        (long or double, long or double) => ToDouble(a) == ToDouble(b),
        (Undefined, Undefined) => true,
        _ => Equals(a, b),
    };

    static object Arithmetic(string op, object? a, object? b)
    {
        if (a is long x && b is long y)
            return op switch
            {
                "+" => x + y, "-" => x - y, "*" => x * y,
                _ => y == 0 ? throw new TemplateRaisedException("modulo by zero") : y == -1 ? 0L : ((x % y) + y) % y, // long.MinValue % -1 overflows in .NET
            };
        if (op == "*" && a is string s && b is long n)
        {
            long count = Math.Max(0, n);
            if (s.Length > 0 && count > MaxChars / s.Length)
                throw new TemplateRaisedException($"'{(s.Length > 20 ? s[..20] + "…" : s)}' * {n} would make more than {MaxChars:N0} characters");
            return string.Concat(Enumerable.Repeat(s, (int)count));
        }
        double p = ToDouble(a), q = ToDouble(b);
        return op switch { "+" => p + q, "-" => p - q, "*" => p * q, _ => p % q };
    }

    static bool Compare(string op, object? a, object? b)
    {
        int c = a is string s && b is string t ? string.CompareOrdinal(s, t) : ToDouble(a).CompareTo(ToDouble(b));
        return op switch { "<" => c < 0, ">" => c > 0, "<=" => c <= 0, _ => c >= 0 };
    }

    static long ToLong(object? v) => v switch
    {
        long l => l,
        bool b => b ? 1 : 0,
        _ => throw new UnsupportedTemplateException($"expected an integer, found {Describe(v)}"),
    };

    static double ToDouble(object? v) => v switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new UnsupportedTemplateException($"expected a number, found {Describe(v)}"),
    };

    static string Describe(object? v) => v switch
    {
        null => "none",
        Undefined => "an undefined value",
        string => "a string",
        List<object?> => "a list",
        Dictionary<string, object?> => "a mapping",
        LoopInfo => "the loop variable",
        _ => v.GetType().Name,
    };
}
