// The SQLite schema of a feature store (one file per dictionary, default <sae folder>/features.db).
// docs/feature-store.md describes every table and column with example queries; keep the two in step
// and raise SchemaVersion on any change a reader would notice.
namespace Loupe.Dictionaries.Features;

/// <summary>Table definitions and the version of the feature-store schema.</summary>
public static class FeatureStoreSchema
{
    /// <summary>The schema version this Loupe writes and reads (meta key <c>schema_version</c>).</summary>
    public const int Version = 1;

    /// <summary>Value of the meta key <c>format</c>, identifying a Loupe feature store.</summary>
    public const string Format = "loupe-features";

    /// <summary>The default file name beside a dictionary's cfg.json.</summary>
    public const string DefaultFileName = "features.db";

    /// <summary>Example kinds in the <c>examples</c> table.</summary>
    public const string Top = "top", Quantile = "quantile";

    /// <summary>Histogram kinds in the <c>histograms</c> table.</summary>
    public const string ActsHistogram = "acts", LogitsHistogram = "logits";

    /// <summary>Logit table kinds in the <c>logits</c> table.</summary>
    public const string Promoted = "promoted", Suppressed = "suppressed";

    internal const string CreateTables = """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE features (
            feature      INTEGER PRIMARY KEY,
            n_active     INTEGER NOT NULL,
            density      REAL    NOT NULL,
            max_act      REAL    NOT NULL,
            mean_act     REAL,
            decoder_norm REAL    NOT NULL
        );
        CREATE TABLE contexts (
            id     INTEGER PRIMARY KEY,
            tokens TEXT NOT NULL
        );
        CREATE TABLE examples (
            feature      INTEGER NOT NULL,
            kind         TEXT    NOT NULL CHECK (kind IN ('top', 'quantile')),
            bin          INTEGER,
            rank         INTEGER NOT NULL,
            context_id   INTEGER NOT NULL REFERENCES contexts(id),
            position     INTEGER NOT NULL,
            activation   REAL    NOT NULL,
            window_start INTEGER NOT NULL,
            window_acts  BLOB    NOT NULL
        );
        CREATE TABLE quantile_intervals (
            feature  INTEGER NOT NULL,
            bin      INTEGER NOT NULL,
            lower    REAL    NOT NULL,
            upper    REAL    NOT NULL,
            n_active INTEGER NOT NULL,
            PRIMARY KEY (feature, bin)
        );
        CREATE TABLE histograms (
            feature   INTEGER NOT NULL,
            kind      TEXT    NOT NULL CHECK (kind IN ('acts', 'logits')),
            bin_edges TEXT    NOT NULL,
            counts    TEXT    NOT NULL,
            PRIMARY KEY (feature, kind)
        );
        CREATE TABLE logits (
            feature   INTEGER NOT NULL,
            kind      TEXT    NOT NULL CHECK (kind IN ('promoted', 'suppressed')),
            rank      INTEGER NOT NULL,
            token_id  INTEGER NOT NULL,
            token_str TEXT,
            value     REAL    NOT NULL,
            PRIMARY KEY (feature, kind, rank)
        );
        CREATE TABLE vocab (
            token_id  INTEGER PRIMARY KEY,
            token_str TEXT NOT NULL
        );
        """;

    /// <summary>The tables and the columns a reader queries in each (checked when a store is opened).</summary>
    internal static readonly (string Table, string[] Columns)[] Columns =
    [
        ("meta", ["key", "value"]),
        ("features", ["feature", "n_active", "density", "max_act", "mean_act", "decoder_norm"]),
        ("contexts", ["id", "tokens"]),
        ("examples", ["feature", "kind", "bin", "rank", "context_id", "position", "activation", "window_start", "window_acts"]),
        ("quantile_intervals", ["feature", "bin", "lower", "upper", "n_active"]),
        ("histograms", ["feature", "kind", "bin_edges", "counts"]),
        ("logits", ["feature", "kind", "rank", "token_id", "token_str", "value"]),
        ("vocab", ["token_id", "token_str"]),
    ];

    /// <summary>
    /// Optional tables written by <c>loupe explain</c> into an existing store (created when first needed, so the
    /// schema version stays 1 and stores without them read as before): one explanation per (feature, explainer
    /// model), the scorers' metrics, and per-feature token counts and cost.
    /// </summary>
    public const string CreateExplanationTables = """
        CREATE TABLE IF NOT EXISTS explanations (
            feature         INTEGER NOT NULL,
            explainer_model TEXT    NOT NULL,
            text            TEXT    NOT NULL,
            created         TEXT    NOT NULL,
            PRIMARY KEY (feature, explainer_model)
        );
        CREATE TABLE IF NOT EXISTS explanation_scores (
            feature         INTEGER NOT NULL,
            explainer_model TEXT    NOT NULL,
            scorer          TEXT    NOT NULL,
            metric          TEXT    NOT NULL,
            value           REAL    NOT NULL,
            PRIMARY KEY (feature, explainer_model, scorer, metric)
        );
        CREATE TABLE IF NOT EXISTS explanation_costs (
            feature           INTEGER NOT NULL,
            explainer_model   TEXT    NOT NULL,
            requests          INTEGER NOT NULL,
            prompt_tokens     INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_usd          REAL,
            PRIMARY KEY (feature, explainer_model)
        );
        """;

    // Built after the bulk insert (faster than maintaining them row by row).
    internal const string CreateIndexes = """
        CREATE INDEX examples_by_feature ON examples (feature, kind, bin, rank);
        CREATE INDEX features_by_density ON features (density);
        """;
}
