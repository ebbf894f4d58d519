using System.Collections.Concurrent;
using System.Net;
using Hangfire;
using Hangfire.Common;
using Hangfire.Dashboard;
using ReTok.Engine;
using ReTok.Tracking;

namespace ReTok.Dashboard.Monitoring;

/// <summary>
/// Hangfire names a job by its method and arguments ("run 42"); an operator looking at /hangfire wants the run's kind and
/// name, and a way back to the run page. Kind and name never change, so each label is read from the run store once.
/// </summary>
public sealed class HangfireRunNames(RunStore runs)
{
    const int MaxCached = 50_000;
    readonly ConcurrentDictionary<long, string> labels = new();

    /// <summary>For <see cref="Hangfire.DashboardOptions.DisplayNameFunc"/>: "train-tokenizer · train · run 42".</summary>
    public string DisplayName(DashboardContext context, Job job)
    {
        if (RunId(job) is not long id) return $"{job.Type.Name}.{job.Method.Name}";
        if (labels.TryGetValue(id, out var label)) return label;
        Run? run;
        // Hangfire renders synchronously; one indexed read per run, then cached
        try { run = runs.GetAsync(id).GetAwaiter().GetResult(); }
        catch (Exception) { return $"run {id}"; }   // database down: the bare id, not cached
        label = run is null ? $"run {id} (not in the run store)" : $"{run.Kind} · {run.Name ?? run.PipelineStep ?? "unnamed"} · run {id}";
        if (labels.Count >= MaxCached) labels.Clear();
        labels[id] = label;
        return label;
    }

    static long? RunId(Job? job) =>
        job is not null && job.Type == typeof(RunExecutor) && job.Args.Count > 0 && job.Args[0] is long id ? id : null;

    static int linkRegistered;

    /// <summary>Adds "open run N on the dashboard" to Hangfire's job page (a process-wide renderer list, so added once).</summary>
    public static void RegisterRunLink()
    {
        if (Interlocked.Exchange(ref linkRegistered, 1) == 1) return;
        GlobalConfiguration.Configuration.UseJobDetailsRenderer(5, dto =>
        {
            if (RunId(dto.JobDetails?.Job) is not long id) return new NonEscapedString(string.Empty);
            // AppPath is the dashboard's runs list ("back to site"), so the run page is one segment below it
            var href = WebUtility.HtmlEncode($"{dto.Page.AppPath}/{id}");
            return new NonEscapedString($"<div class=\"alert alert-info\">ReTok run {id}: <a href=\"{href}\">open the run page</a> (metrics, artifacts, logs, lineage)</div>");
        });
    }
}
