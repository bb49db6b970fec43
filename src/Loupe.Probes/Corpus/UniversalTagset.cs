namespace Loupe.Probes.Corpus;

/// <summary>
/// The twelve universal part-of-speech tags of Petrov, Das and McDonald (2012), and the mapping
/// from the Brown Corpus tags to them. Steps of <see cref="TryFromBrown"/>:
/// 1. lower-case; a <c>fw-</c> prefix (foreign word) gives X whatever follows;
/// 2. strip the modifiers <c>-tl</c> (title), <c>-hl</c> (headline), <c>-nc</c> (cited word), repeatedly;
/// 3. a contraction of two tags (<c>ppss+md</c> "I'll", <c>pps+bez</c> "it's") gives PRT, as the standard table does;
/// 4. look the tag up in the base table; failing that strip one trailing <c>*</c> (negated:
///    <c>md*</c> "can't", <c>do*</c> "don't") or <c>$</c> (possessive: <c>nn$</c>, <c>np$</c>) and look again.
/// The table is written from the Brown tag definitions so that it reproduces the standard
/// brown→universal table (NLTK's <c>en-brown.map</c>): on the news category it gives NLTK's published
/// tag counts to within the handful of tokens NLTK's reader splits differently (see the tests).
/// Its choices that are not obvious: subordinating conjunctions (<c>cs</c>) are ADP, existential
/// <c>there</c> (<c>ex</c>) and interjections (<c>uh</c>) are PRT, possessive determiners (<c>pp$</c>
/// "my", <c>wp$</c> "whose") are DET, nominal pronouns (<c>pn</c> "anybody") and adverbial nouns
/// (<c>nr</c> "home", "Friday") are NOUN, ordinals (<c>od</c>) are ADJ, negation <c>*</c> ("not") is ADV.
/// </summary>
public static class UniversalTagset
{
    public const string Noun = "NOUN", Verb = "VERB", Adj = "ADJ", Adv = "ADV", Pron = "PRON", Det = "DET",
        Adp = "ADP", Num = "NUM", Conj = "CONJ", Prt = "PRT", Punct = ".", Other = "X";

    /// <summary>The tags in a fixed order; a label is an index into this list.</summary>
    public static IReadOnlyList<string> Tags { get; } = [Noun, Verb, Adj, Adv, Pron, Det, Adp, Num, Conj, Prt, Punct, Other];

    /// <summary>The index of <paramref name="tag"/> in <see cref="Tags"/>.</summary>
    /// <exception cref="InputError">The tag is not one of the twelve.</exception>
    public static int IndexOf(string tag)
    {
        for (int i = 0; i < Tags.Count; i++)
            if (string.Equals(Tags[i], tag, StringComparison.Ordinal)) return i;
        throw new InputError($"'{tag}' is not a universal tag; the tags are {string.Join(" ", Tags)}");
    }

    /// <summary>Base Brown tags (after the modifiers are stripped) → universal tag.</summary>
    static readonly Dictionary<string, string> s_brown = new(StringComparer.Ordinal)
    {
        // Punctuation (Brown tags each mark with itself; `` and '' are opening and closing quotes).
        ["."] = Punct, [","] = Punct, [":"] = Punct, [";"] = Punct, ["("] = Punct, [")"] = Punct,
        ["--"] = Punct, ["``"] = Punct, ["''"] = Punct, ["'"] = Punct,
        // Pre-qualifiers and pre-quantifiers: quite, rather (abl); all, half (abn); both (abx).
        ["abl"] = Prt, ["abn"] = Prt, ["abx"] = Det,
        // Post-determiners: many, few, next, last.
        ["ap"] = Adj,
        ["at"] = Det,
        // Forms of be, do, have, and modals.
        ["be"] = Verb, ["bed"] = Verb, ["bedz"] = Verb, ["beg"] = Verb, ["bem"] = Verb, ["ben"] = Verb, ["ber"] = Verb, ["bez"] = Verb,
        ["do"] = Verb, ["dod"] = Verb, ["doz"] = Verb,
        ["hv"] = Verb, ["hvd"] = Verb, ["hvg"] = Verb, ["hvn"] = Verb, ["hvz"] = Verb,
        ["md"] = Verb,
        ["vb"] = Verb, ["vbd"] = Verb, ["vbg"] = Verb, ["vbn"] = Verb, ["vbz"] = Verb,
        ["cc"] = Conj,
        ["cd"] = Num,
        // Subordinating conjunctions (that, as, if) group with prepositions.
        ["cs"] = Adp,
        ["in"] = Adp,
        // Determiners: this, that (dt); some, any (dti); these, those (dts); either, neither (dtx).
        ["dt"] = Det, ["dti"] = Det, ["dts"] = Det, ["dtx"] = Det,
        // Existential there.
        ["ex"] = Prt,
        ["fw"] = Other, ["nil"] = Other,
        ["jj"] = Adj, ["jjr"] = Adj, ["jjs"] = Adj, ["jjt"] = Adj,
        // Ordinals: first, second.
        ["od"] = Adj,
        // Nouns, proper nouns, adverbial nouns (home, today, west), nominal pronouns (anyone, nothing).
        ["nn"] = Noun, ["nns"] = Noun, ["np"] = Noun, ["nps"] = Noun, ["nr"] = Noun, ["nrs"] = Noun, ["pn"] = Noun,
        // Personal pronouns; possessive determiners (my, his) are DET, possessive pronouns (mine) PRON.
        ["pp$"] = Det, ["pp$$"] = Pron, ["ppl"] = Pron, ["ppls"] = Pron, ["ppo"] = Pron, ["pps"] = Pron, ["ppss"] = Pron,
        // Qualifiers: very, too (ql); enough, indeed (qlp).
        ["ql"] = Adv, ["qlp"] = Adv,
        ["rb"] = Adv, ["rbr"] = Adv, ["rbt"] = Adv, ["rn"] = Adv,
        // Particles: up, out (rp); infinitival to; interjections.
        ["rp"] = Prt, ["to"] = Prt, ["uh"] = Prt,
        // wh-words: which (wdt); whose (wp$); whom (wpo); who (wps); how (wql); where, when (wrb).
        ["wdt"] = Det, ["wp$"] = Det, ["wpo"] = Pron, ["wps"] = Pron, ["wql"] = Adv, ["wrb"] = Adv,
        // Negation: not, n't.
        ["*"] = Adv,
    };

    /// <summary>The Brown base tags the table knows (before modifiers and suffixes), in ordinal order.</summary>
    public static IReadOnlyList<string> BrownBaseTags { get; } = s_brown.Keys.Order(StringComparer.Ordinal).ToArray();

    /// <summary>Maps a Brown tag (any case, with modifiers) to its universal tag; false when the tag is unknown.</summary>
    public static bool TryFromBrown(string brownTag, out string universal)
    {
        universal = "";
        if (string.IsNullOrEmpty(brownTag)) return false;
        string tag = brownTag.ToLowerInvariant();
        if (tag.StartsWith("fw-", StringComparison.Ordinal))
        {
            universal = Other;
            return true;
        }
        tag = StripModifiers(tag);
        if (tag.Length > 1 && tag.Contains('+'))
        {
            universal = Prt;
            return true;
        }
        if (s_brown.TryGetValue(tag, out var found)
            || (tag.Length > 1 && (tag[^1] == '*' || tag[^1] == '$') && s_brown.TryGetValue(tag[..^1], out found)))
        {
            universal = found;
            return true;
        }
        return false;
    }

    /// <summary>Maps a Brown tag to its universal tag.</summary>
    /// <exception cref="InputError">The tag is not a Brown tag.</exception>
    public static string FromBrown(string brownTag) =>
        TryFromBrown(brownTag, out var universal) ? universal
            : throw new InputError($"'{brownTag}' is not a Brown Corpus tag (known base tags: {string.Join(" ", BrownBaseTags)}; modifiers -tl -hl -nc, prefix fw-, suffixes * and $)");

    static string StripModifiers(string tag)
    {
        while (true)
        {
            if (tag.Length > 3 && (tag.EndsWith("-tl", StringComparison.Ordinal) || tag.EndsWith("-hl", StringComparison.Ordinal) || tag.EndsWith("-nc", StringComparison.Ordinal)))
                tag = tag[..^3];
            else return tag;
        }
    }
}
