"""The method's measuring and training stages: analyze, sensitivity, suggest, distill, evaluate."""
