// Validates karpenter.sh/v1 objects against the schema published in @kubernetes-models/karpenter.
// Reads a JSON array of Kubernetes objects on stdin and prints a JSON array with one entry per
// object: null when it is valid, otherwise what the schema rejects. Exits 0 either way.
import { NodePool } from "@kubernetes-models/karpenter/karpenter.sh/v1";

const MODELS = { "karpenter.sh/v1 NodePool": NodePool };

function problemsOf(object) {
  const Model = MODELS[`${object.apiVersion} ${object.kind}`];
  if (!Model) return `no published schema for ${object.apiVersion} ${object.kind}`;
  try {
    new Model(object).validate();
    return null;
  } catch (error) {
    return error.message;
  }
}

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => process.stdout.write(JSON.stringify(JSON.parse(input).map(problemsOf))));
