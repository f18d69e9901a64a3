"""Present a :class:`CheckResult`: a rich table for people, JUnit XML for CI."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from rich.console import Console
from rich.table import Table

from vidconv_deploy.check.result import CheckResult, Finding


def print_table(result: CheckResult, model_name: str, console: Console) -> None:
    """Findings grouped by problem (errors first, most frequent first), then the partition and the verdict.

    A ViC graph repeats the same problem in every block; one row per problem with a count and the
    first node reads better than forty near-identical rows (``--json`` lists every node).
    """
    groups: dict[tuple[str, str, str, str], list[Finding]] = {}
    for f in result.findings:
        groups.setdefault((f.severity, f.rule, f.op_type, f.fix), []).append(f)
    table = Table(title=f"{model_name} on {result.target}", show_lines=True)
    for col, justify in (("severity", "left"), ("op / rule", "left"), ("nodes", "right"), ("first node", "left"),
                         ("problem and fix", "left")):
        table.add_column(col, overflow="fold", justify=justify)  # type: ignore[arg-type]
    for (severity, rule, op_type, fix), found in sorted(groups.items(), key=lambda kv: (kv[0][0] != "error", -len(kv[1]))):
        style = "red" if severity == "error" else "yellow"
        table.add_row(f"[{style}]{severity}[/{style}]", f"{op_type}\n{rule}", str(len(found)), found[0].node,
                      f"{found[0].message}\n[bold]fix:[/bold] {fix}")
    if result.findings:
        console.print(table)
    parts = ", ".join(f"{dev}: {v['ops']} ops in {v['subgraphs']} subgraph(s)" for dev, v in result.partition["devices"].items())
    console.print(f"partition: {parts or 'no compute ops'}")
    verdict = "[green]compliant[/green]" if result.compliant else f"[red]not compliant[/red] ({len(result.errors)} error(s))"
    console.print(f"{result.target}: {verdict}")


def junit_xml(result: CheckResult) -> str:
    """One testcase per counted op (failures = its error findings) plus one for the whole graph."""
    by_node: dict[str, list] = {}
    for f in result.findings:
        by_node.setdefault(f.node, []).append(f)
    cases = [(op["name"], op["op_type"]) for op in result.ops]
    cases += [(node, fs[0].op_type) for node, fs in by_node.items() if node not in {c[0] for c in cases}]
    suite = ET.Element("testsuite", name=f"vidconv-check.{result.target}", tests=str(len(cases)))
    failures = 0
    for node, op_type in cases:
        case = ET.SubElement(suite, "testcase", classname=f"{result.target}.{op_type}", name=node)
        for f in by_node.get(node, []):
            if f.severity == "error":
                failures += 1
                fail = ET.SubElement(case, "failure", type=f.rule, message=f.message)
                fail.text = f"fix: {f.fix}\nsource: {f.source}"
            else:
                out = ET.SubElement(case, "system-out")
                out.text = f"{f.rule}: {f.message} (fix: {f.fix})"
    suite.set("failures", str(failures))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"
