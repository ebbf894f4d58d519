using ReTok.Tracking;

namespace ReTok.Dashboard.Pages;

// The parameters of each page component (its Model), filled by the handlers in PageEndpoints.cs.

public sealed record MessageModel(PageContext Page, string Title, string Message, string Class = "error");

public sealed record LoginModel(PageContext Page, bool NoUsers, bool Failed, string ReturnUrl);

public sealed record RunsModel(PageContext Page, List<Run> Runs, int Limit, List<string> Kinds, List<string> Experiments, List<string> Tags,
    string? Experiment, string? Kind, RunStatus? Status, string? Tag, Guid? Pipeline);

public sealed record RunModel(PageContext Page, Run Run, string? Msg, Dictionary<string, List<(long Step, double Value)>> Series, List<MetricPoint> Latest,
    List<Artifact> Artifacts, LineageDto Lineage, List<LogDto> Logs);

public sealed record CompareModel(PageContext Page, IReadOnlyList<long> Ids, bool All, CompareDto? Compare, List<ReTok.Plots.Chart> Charts);

public sealed record CompareImagesModel(PageContext Page, IReadOnlyList<long> Ids, CompareImagesDto Images);

public sealed record ExperimentsModel(PageContext Page, List<ExperimentDto> Experiments, List<ResultRow> Results);

public sealed record ExperimentModel(PageContext Page, string Name, List<ResultRow> Results, IReadOnlyList<(string Label, List<KCurve> Curves)> KRuns,
    IReadOnlyList<WebhookInfo> Webhooks, IReadOnlyList<DeliveryInfo> Deliveries);

public sealed record WorkersModel(PageContext Page, List<WorkerDto> Workers);

public sealed record SubmitModel(PageContext Page, IReadOnlyList<string> Files, string? File, string? Yaml, string Overrides, IReadOnlyList<string>? Errors, long MaxUploadBytes);
